"""Inference chains, self-consistency, preference pairs and resumable shards,
with a scripted generate function in place of a model."""

import json
import os
import signal

import numpy as np
import pytest

from tinythinker_jax import shards
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data.schema import AnswerType, Example, labelled
from tinythinker_jax.reasoning import chains, formats, preferences
from tinythinker_jax.reasoning.chains import ChainRun, Generation, Sampling
from tinythinker_jax.reasoning.formats import Format

EXAMPLE = Example(id="q1", question="Where do you keep milk?", answer="B",
                  choices=labelled(["oven", "fridge", "shelf"]))


class Scripted:
  """Answers each prompt from a rule, records every call (prompts and sampling)."""

  def __init__(self, rule):
    self.rule = rule
    self.calls = []

  def __call__(self, prompts, sampling, seed):
    self.calls.append((list(prompts), sampling, seed))
    return [[Generation(self.rule(p, j), -1.0 - j, 3) for j in range(sampling.num_samples)]
            for p in prompts]


def tinythinker_rule(prompt, sample):
  if prompt.endswith("Recall:"):
    return ["Milk is kept cold", "Milk is kept hot.", "Milk is kept cold"][sample % 3]
  if "Analyze: For option" in prompt and prompt.endswith(","):
    label = prompt[-2]
    return f"reason {label} ({'cold' if 'cold' in prompt else 'hot'})"
  if prompt.endswith("Summarize:"):
    return "So the answer is option B." if "cold" in prompt else "So the answer is option A."
  raise AssertionError(prompt)


def test_staged_chain_renders_each_stage_exactly():
  generate = Scripted(tinythinker_rule)
  (runs,) = chains.run_staged([EXAMPLE], generate)
  recall_call, analyze_call, summarize_call = generate.calls
  head = "Where do you keep milk?\n(A) oven (B) fridge (C) shelf"
  assert recall_call[0] == [f"{head}\nRecall:"]
  assert analyze_call[0] == [f"{head}\nRecall: Milk is kept cold.\nAnalyze: For option {x},"
                             for x in "ABC"]
  assert summarize_call[0] == [
      f"{head}\nRecall: Milk is kept cold.\nAnalyze: For option A, reason A (cold) "
      "For option B, reason B (cold) For option C, reason C (cold)\nSummarize:"]
  (run,) = runs
  assert run.recall == "Milk is kept cold."  # a period appended
  assert run.answer == "B" and run.error is None
  assert run.logprobs == {"recall": -1.0, "analyze": -3.0, "summarize": -1.0}


def test_self_consistency_samples_recall_and_analyze_and_votes():
  generate = Scripted(tinythinker_rule)
  (runs,) = chains.run_chains([EXAMPLE], generate, fmt=Format.TINYTHINKER,
                              answer_type=AnswerType.LETTER, sampled=True, num_runs=3)
  samplings = [c[1] for c in generate.calls]
  assert samplings[0] == Sampling(temperature=0.7, num_samples=3)  # recall
  assert samplings[1] == Sampling(temperature=0.7, num_samples=1)  # analyze, per run
  assert samplings[2] == Sampling()  # summarize greedy
  assert len(generate.calls[1][0]) == 9  # 3 runs x 3 options in one batch
  assert [r.answer for r in runs] == ["B", "A", "B"]
  assert chains.majority_vote(runs) == "B"


def test_majority_vote_ties_go_to_the_first_answer_and_ignore_failures():
  runs = [ChainRun("", None, "x"), ChainRun("", "C"), ChainRun("", "A"), ChainRun("", "A"),
          ChainRun("", "C")]
  assert chains.majority_vote(runs) == "C"
  assert chains.majority_vote([ChainRun("", None, "x")]) is None


def test_ablation_formats_skip_their_stages():
  generate = Scripted(tinythinker_rule)
  chains.run_staged([EXAMPLE], generate, fmt=Format.SUMMARIZE_ONLY)
  (call,) = generate.calls
  assert call[0] == ["Where do you keep milk?\n(A) oven (B) fridge (C) shelf\nSummarize:"]
  generate = Scripted(tinythinker_rule)
  chains.run_staged([EXAMPLE], generate, fmt=Format.RECALL_SUMMARIZE)
  assert len(generate.calls) == 2 and generate.calls[1][0][0].endswith(
      "Recall: Milk is kept cold.\nSummarize:")


def test_single_pass_finetune_cot_and_vanilla():
  example = Example(id="m", question="What is 2 + 3?", answer="5")
  generate = Scripted(lambda p, j: ["2 plus 3 is 5. --> 5", "no arrow 5", "--> 6"][j])
  (runs,) = chains.run_single_pass([example], generate, fmt=Format.FINETUNE_COT,
                                   answer_type=AnswerType.NUMBER,
                                   sampling=Sampling(temperature=0.7), num_runs=3)
  assert [r.answer for r in runs] == ["5", None, "6"]
  assert runs[1].error.startswith("no '-->'")
  assert generate.calls[0][0] == ["What is 2 + 3?"]
  generate = Scripted(lambda p, j: "C")
  (runs,) = chains.run_single_pass([EXAMPLE], generate, fmt=Format.VANILLA,
                                   answer_type=AnswerType.LETTER)
  assert generate.calls[0][0] == [
      "Where do you keep milk? Answer choices: (A) oven, (B) fridge, (C) shelf."]
  assert runs[0].answer == "C"
  with pytest.raises(ValueError, match="temperature"):
    chains.run_single_pass([EXAMPLE], generate, fmt=Format.VANILLA,
                           answer_type=AnswerType.LETTER, num_runs=2)


# ----------------------------------------------------------- preference pairs


def test_balance_drops_shared_strings_fills_from_teacher_and_resamples():
  rng = np.random.default_rng(0)
  triples = preferences.balance(["a", "b", "shared"], ["x", "shared", "y", "z", "w"],
                               ["t1", "a", "x", "t2"], rng)
  chosen = [c for c, _, _ in triples]
  rejected = [r for _, r, _ in triples]
  assert "shared" not in chosen and "shared" not in rejected
  # 2 student chosen vs 4 rejected: two teacher strings (not 'a', not 'x') fill in.
  assert sorted(set(chosen)) == ["a", "b", "t1", "t2"]
  assert sorted(rejected) == ["w", "x", "y", "z"]
  assert {s for c, _, s in triples if c.startswith("t")} == {preferences.TEACHER}
  # More chosen than rejected: rejected are resampled, every chosen is used once.
  triples = preferences.balance(["a", "b", "c", "d"], ["x"], [], rng)
  assert [c for c, _, _ in triples] == ["a", "b", "c", "d"]
  assert [r for _, r, _ in triples] == ["x"] * 4
  assert preferences.balance(["a"], [], ["t"], rng) == []  # nothing was wrong
  assert preferences.balance([], ["x"], [], rng) == []  # nothing to prefer
  assert len(preferences.balance(["a", "b", "c"], ["x"], [], rng, max_pairs=2)) == 2


def test_balance_is_seeded():
  args = (["a"], ["x", "y", "z"], [])
  one = preferences.balance(*args, np.random.default_rng(5))
  two = preferences.balance(*args, np.random.default_rng(5))
  assert one == two


def test_recall_pairs_and_pair_rows_follow_the_chains():
  runs = chains.run_staged([EXAMPLE], Scripted(tinythinker_rule),
                           recall=Sampling(temperature=0.7), num_runs=3)[0]
  rng = np.random.default_rng(0)
  pairs = preferences.recall_pairs(EXAMPLE, runs, ["Teacher recall"], rng)
  assert [(p.chosen, p.rejected, p.chosen_source) for p in pairs] == [
      ("Milk is kept cold.", "Milk is kept hot.", "student")]
  assert pairs[0].prompt.endswith("\nRecall:")
  # The pair row is the chosen recall; its backup is its own (gold) chain's analyses.
  (row,) = preferences.pair_rows(EXAMPLE, runs, pairs, ["Teacher recall"],
                                 [{"A": "ta", "B": "tb", "C": "tc"}])
  gold_run = next(r for r in runs if r.recall == "Milk is kept cold.")
  assert (row.recall, row.backup, row.source) == ("Milk is kept cold.", gold_run.analyses,
                                                  "student")
  # A teacher-filled chosen recall takes the analyses the teacher wrote after it.
  teacher_pair = preferences.PreferencePair("recall", EXAMPLE.id, "", "Teacher recall.",
                                            "x", preferences.TEACHER)
  (row,) = preferences.pair_rows(EXAMPLE, runs, [teacher_pair],
                                 ["Other", "Teacher recall"],
                                 [{"A": "no"}, {"A": "ta", "B": "tb"}])
  assert (row.backup, row.source) == ({"A": "ta", "B": "tb"}, "teacher")


def _pairs_by_prompt_option(pairs):
  out = {}
  for p in pairs:
    assert p.prompt.endswith(f"Analyze: For option {p.option},")
    assert p.stage == "analyze" and p.recall == "Milk is kept cold."
    out.setdefault(p.option, []).append((p.chosen, p.rejected))
  return out


def test_analyze_pairs_as_tinythinker_builds_them():
  row = preferences.PairRow("Milk is kept cold.", {"A": "tA", "B": "tB", "C": "tC"},
                            "teacher")
  rng = np.random.default_rng(0)
  # Gold is B. Two distinct gold chains (one duplicated), one chain predicting A,
  # one predicting C, one unparsable (left out), one predicting A with the same
  # analyses as a gold chain (dropped from both sides with it).
  runs = [ChainRun("", "B", analyses={"A": "a1", "B": "b1", "C": "c1"}),
          ChainRun("", "B", analyses={"A": "a1", "B": "b1", "C": "c1"}),
          ChainRun("", "B", analyses={"A": "a3", "B": "b3", "C": "c3"}),
          ChainRun("", "A", analyses={"A": "a2", "B": "b2", "C": "c1"}),
          ChainRun("", "C", analyses={"A": "a4", "B": "b4", "C": "c4"}),
          ChainRun("", None, analyses={"A": "a5", "B": "b5", "C": "c5"}),
          ChainRun("", "A", analyses={"A": "a3", "B": "b3", "C": "c3"})]
  pairs = preferences.analyze_pairs(EXAMPLE, row, runs, rng)
  by_option = _pairs_by_prompt_option(pairs)
  # One gold chain (b1) is left vs two wrong ones: each (gold, wrong) couple gives the
  # gold option's pair and the wrong prediction's pair; only the chain that predicted
  # A gives A's rejected analysis, only the one that predicted C gives C's.
  assert sorted(by_option["B"]) == [("b1", "b2"), ("b1", "b4")]
  assert by_option["A"] == [("a1", "a2")]
  assert by_option["C"] == [("c1", "c4")]
  assert {p.chosen_source for p in pairs} == {"student"}
  # More gold chains than wrong ones: the wrong one is reused for each.
  runs = [ChainRun("", "B", analyses={"A": f"a{i}", "B": f"b{i}", "C": "c"})
          for i in range(3)] + [ChainRun("", "C", analyses={"A": "x", "B": "y", "C": "z"})]
  by_option = _pairs_by_prompt_option(preferences.analyze_pairs(EXAMPLE, row, runs, rng))
  assert sorted(by_option["B"]) == [("b0", "y"), ("b1", "y"), ("b2", "y")]
  assert by_option["C"] == [("c", "z")] * 3
  # No chain reached the gold option: the row's backup analyses are chosen.
  runs = [ChainRun("", "A", analyses={"A": "a1", "B": "b1", "C": "c1"}),
          ChainRun("", "C", analyses={"A": "a2", "B": "b2", "C": "c2"})]
  pairs = preferences.analyze_pairs(EXAMPLE, row, runs, rng)
  assert sorted((p.option, p.chosen, p.rejected) for p in pairs) == [
      ("A", "tA", "a1"), ("B", "tB", "b1"), ("B", "tB", "b2"), ("C", "tC", "c2")]
  assert {p.chosen_source for p in pairs} == {"teacher"}
  # Nothing was wrong: no pairs; a same-text pair carries no preference.
  assert preferences.analyze_pairs(EXAMPLE, row, runs[:0] + [
      ChainRun("", "B", analyses={"A": "a", "B": "b", "C": "c"})], rng) == []
  same = [ChainRun("", "B", analyses={"A": "a", "B": "b", "C": "c"}),
          ChainRun("", "A", analyses={"A": "a", "B": "b", "C": "c2"})]
  assert preferences.analyze_pairs(EXAMPLE, row, same, rng) == []


# ----------------------------------------------------------------- shards


def test_sharded_work_resumes_without_redoing_finished_shards(tmp_path):
  done = []

  def work(items, index):
    if index == 2 and not done.count("crashed"):
      done.append("crashed")
      raise RuntimeError("killed")
    done.append(index)
    return [{"item": i} for i in items]

  items = list(range(10))
  with pytest.raises(RuntimeError):
    shards.run_sharded(items, work, directory=str(tmp_path), name="w", shard_size=3,
                       progress=False)
  assert done == [0, 1, "crashed"]
  out = shards.run_sharded(items, work, directory=str(tmp_path), name="w", shard_size=3,
                           progress=False)
  assert done == [0, 1, "crashed", 2, 3]  # shards 0 and 1 were not redone
  assert [r["item"] for r in out] == items
  with pytest.raises(ValueError, match="shards.json.*shard_size"):
    shards.run_sharded(items, work, directory=str(tmp_path), name="w", shard_size=4,
                       progress=False)


def test_sigterm_finishes_the_shard_in_progress_then_stops(tmp_path):
  from tinythinker_jax import gin_utils, preemption  # pylint: disable=import-outside-toplevel
  done = []

  def work(items, index):
    if index == 1 and not done.count("signalled"):
      os.kill(os.getpid(), signal.SIGTERM)  # a real preemption notice, mid-shard
      done.append("signalled")
    done.append(index)
    return [{"item": i} for i in items]

  items = list(range(10))
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Preempted, match="w: 2 of 4 shards written"):
    shards.run_sharded(items, work, directory=str(tmp_path), name="w", shard_size=3,
                       progress=False)
  assert done == [0, "signalled", 1]  # shard 1 was finished and written
  assert signal.getsignal(signal.SIGTERM) == before
  out = shards.run_sharded(items, work, directory=str(tmp_path), name="w", shard_size=3,
                           progress=False)
  assert done == [0, "signalled", 1, 2, 3]
  assert [r["item"] for r in out] == items

  # The binaries report it and exit with 143 (128 + SIGTERM), not a traceback.
  def handler(args, bindings):
    raise preemption.Preempted("sampling: 2 of 4 shards written")
  assert gin_utils.run("tinythinker sample", lambda parser: None, handler, []) == 143


def test_processes_take_alternate_shards(tmp_path):
  seen = {0: [], 1: []}
  for process in (1, 0):
    def work(items, index, process=process):
      seen[process].append(index)
      return [{"i": i} for i in items]
    if process == 1:
      with pytest.raises(FileNotFoundError, match="shard 0 is missing"):
        shards.run_sharded(list(range(8)), work, directory=str(tmp_path), name="p",
                           shard_size=2, process_index=1, process_count=2, progress=False)
    else:
      out = shards.run_sharded(list(range(8)), work, directory=str(tmp_path), name="p",
                               shard_size=2, process_index=0, process_count=2,
                               progress=False)
  assert seen == {0: [0, 2], 1: [1, 3]}
  assert [r["i"] for r in out] == list(range(8))
  with open(tmp_path / "shards.json") as f:
    assert json.load(f)["num_items"] == 8


def test_byte_codec_round_trips_and_stops_at_eos():
  codec = vocabularies.TextCodec("byte")
  ids = codec.encode("héllo")
  assert ids == [b + 3 for b in "héllo".encode()]
  assert codec.decode(ids + [1, 50, 60]) == "héllo"
  assert codec.vocab_size == 259 + 100


def test_finetune_cot_decoder_format_prompts_and_reads_like_the_papers_code():
  """`{question} ###` -> ` {rationale} --> {answer} END` (METHODS.md): the prompt
  ends in ` ###`, and what follows `END` in a completion is not read."""
  example = Example(id="m", question="What is 2 + 3?", answer="5")
  pair = formats.finetune_cot_decoder(example, " 2 plus 3 is 5. ")
  assert (pair.inputs, pair.targets) == ("What is 2 + 3? ###", " 2 plus 3 is 5. --> 5 END")
  record = {"id": "m", "method": "finetune_cot", "example": example.to_json(),
            "rationale": "2 plus 3 is 5.", "answer": "5", "sample_index": 0,
            "provenance": {}}
  (rendered,) = formats.render_record(record, Format.FINETUNE_COT_DECODER, None)
  assert (rendered["inputs"], rendered["targets"]) == (pair.inputs, pair.targets)
  generate = Scripted(lambda p, j: [" 2 plus 3 is 5. --> 5 END --> 7 END",
                                    " 2 and 3 --> 6 END"][j])
  (runs,) = chains.run_single_pass([example], generate, fmt=Format.FINETUNE_COT_DECODER,
                                   answer_type=AnswerType.NUMBER,
                                   sampling=Sampling(temperature=0.7), num_runs=2)
  assert generate.calls[0][0] == ["What is 2 + 3? ###"]
  assert [r.answer for r in runs] == ["5", "6"]
