"""The teacher client against a real local HTTP server with scripted faults."""

import asyncio
import dataclasses
import json
import time

import pytest

from tests.openai_fault_server import FaultServer
from tinythinker_jax import reports, paths
from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.teacher import pipelines
from tinythinker_jax.teacher.cache import CompletionCache
from tinythinker_jax.teacher.client import (Prompt, TeacherClient, TeacherConfig,
                                            TeacherError)

FAST = dict(initial_backoff_s=0.01, max_backoff_s=0.05, timeout_s=1.0, max_retries=4)


def run_samples(server, tmp_path, prompt, n, **overrides):
  config = TeacherConfig(base_url=server.base_url, model="test", **dict(FAST, **overrides))

  async def go():
    with CompletionCache(str(tmp_path / "cache.jsonl")) as cache:
      async with TeacherClient(config, cache) as client:
        return await client.samples(prompt, n), client.usage
  return asyncio.run(go())


@pytest.mark.parametrize("fault", ["429", "500", "malformed", "truncated", "stall"])
def test_each_fault_is_retried(tmp_path, fault):
  with FaultServer([fault, fault], stall_s=2.0) as server:
    [sample], usage = run_samples(server, tmp_path, Prompt(text="hi"), 1)
  assert sample.text.startswith("reply 3.0")
  assert (usage.requests, usage.retries, usage.failures) == (3, 2, 0)
  assert len(server.requests) == 3


def test_retry_after_is_honoured(tmp_path):
  with FaultServer(["429"], retry_after="0.6") as server:
    start = time.monotonic()
    run_samples(server, tmp_path, Prompt(text="hi"), 1)
    assert time.monotonic() - start >= 0.6


def test_gives_up_after_max_retries_naming_the_error(tmp_path):
  with FaultServer(default="500") as server:
    with pytest.raises(TeacherError, match="gave up after 3 attempts: HTTP 500"):
      run_samples(server, tmp_path, Prompt(text="hi"), 1, max_retries=2)
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(tmp_path):
  with FaultServer(["400"]) as server:
    with pytest.raises(TeacherError, match="HTTP 400"):
      run_samples(server, tmp_path, Prompt(text="hi"), 1)
    assert len(server.requests) == 1


def test_loops_when_server_ignores_n(tmp_path):
  with FaultServer(choices_per_request=1) as server:
    samples, usage = run_samples(server, tmp_path, Prompt(text="hi", temperature=0.7), 4)
  assert [s.sample_index for s in samples] == [0, 1, 2, 3]
  assert len({s.text for s in samples}) == 4
  assert [r["n"] for r in server.requests[:1]] == [4] and len(server.requests) == 4
  assert usage.completion_tokens == 20


def test_n_is_used_when_honoured_and_cache_prevents_repeats(tmp_path):
  prompt = Prompt(messages=(("system", "s"), ("user", "u")), temperature=0.7)
  with FaultServer() as server:
    first, _ = run_samples(server, tmp_path, prompt, 3)
    assert len(server.requests) == 1 and server.requests[0]["n"] == 3
    again, usage = run_samples(server, tmp_path, prompt, 5)
    assert len(server.requests) == 2 and server.requests[1]["n"] == 2  # Only the new two.
  assert [s.text for s in again[:3]] == [s.text for s in first]
  assert usage.cached == 3 and [s.cached for s in again] == [True] * 3 + [False] * 2


def test_api_key_is_sent_but_never_written(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("TT_TEST_KEY", "sk-secret-123")
  with FaultServer(["500"]) as server:
    run_samples(server, tmp_path, Prompt(text="hi"), 1, api_key_env="TT_TEST_KEY")
  assert server.headers[-1]["Authorization"] == "Bearer sk-secret-123"
  assert "sk-secret-123" not in (tmp_path / "cache.jsonl").read_text()
  assert "sk-secret-123" not in caplog.text
  assert "sk-secret" not in repr(TeacherConfig(api_key_env="TT_TEST_KEY"))


def test_torn_cache_line_is_reported_and_skipped(tmp_path):
  path = tmp_path / "cache.jsonl"
  with CompletionCache(str(path)) as cache:
    cache.put("k1", {"prompt": "a"}, 0, {"text": "one"})
    cache.put("k2", {"prompt": "b"}, 0, {"text": "two"})
  with open(path, "a") as f:
    f.write('{"key": "k3", "request": {"pro')  # A write cut short by kill -9.
  with CompletionCache(str(path)) as cache:
    assert cache.torn_lines == 1 and len(cache) == 2 and "k3" not in cache
    cache.put("k4", {"prompt": "d"}, 0, {"text": "four"})
  with CompletionCache(str(path)) as cache:
    assert cache.torn_lines == 1 and sorted(cache._records) == ["k1", "k2", "k4"]
    assert cache.get("k4")["response"]["text"] == "four"


def test_finetune_cot_pipeline_keeps_answer_consistent_rationales(tmp_path):
  """Two-step zero-shot-CoT with D samples; a scripted 'teacher' answers by prompt."""
  examples = datasets.load_dataset("coin_flip", seed=0)["test"][:6]
  gold = {e.question: e.answer for e in examples}

  class AnsweringServer(FaultServer):

    def completion(self, body, index):
      payload = super().completion(body, index)
      prompt = body["messages"][-1]["content"]
      if prompt.endswith("Therefore, the answer is"):
        question = prompt.split("\n")[0][len("Q: "):]
        # Right on even request numbers, wrong on odd ones.
        answer = gold[question] if index % 2 == 0 else {"yes": "no", "no": "yes"}[
            gold[question]]
        payload["choices"][0]["message"]["content"] = f" {answer}."
      return payload

  with AnsweringServer(choices_per_request=1) as server:
    config = TeacherConfig(base_url=server.base_url, model="scripted", max_concurrency=1,
                           **FAST)
    summary = pipelines.teach(examples, method=pipelines.Method.FINETUNE_COT,
                              answer_type=AnswerType.YES_NO, output_dir=str(tmp_path),
                              teacher=config,
                              finetune_cot=pipelines.FinetuneCotSettings(num_samples=2),
                              progress=False)
    asked = len(server.requests)
  step1 = [r for r in server.requests if "Let's think step by step." in
           r["messages"][-1]["content"] and not r["messages"][-1]["content"].endswith("is")]
  assert all(r["temperature"] == 0.7 for r in step1)
  assert summary.samples == 12 and summary.kept + sum(summary.dropped.values()) == 12
  records = paths.read_jsonl(str(tmp_path / "records.jsonl"))
  assert len(records) == summary.kept and 0 < summary.kept < 12
  for r in records:
    assert r["answer"] == gold[r["example"]["question"]]
    assert r["provenance"]["teacher"].startswith("scripted @ ")
    assert r["provenance"]["sampling"]["num_samples"] == 2
  assert summary.teacher_accuracy == pytest.approx(summary.kept / 12)
  # Resuming asks nothing again.
  with AnsweringServer(choices_per_request=1) as server:
    config = TeacherConfig(base_url=server.base_url, model="scripted", **FAST)
    again = pipelines.teach(examples, method=pipelines.Method.FINETUNE_COT,
                            answer_type=AnswerType.YES_NO, output_dir=str(tmp_path),
                            teacher=config,
                            finetune_cot=pipelines.FinetuneCotSettings(num_samples=2),
                            progress=False)
    assert len(server.requests) == 0
  assert again.kept == summary.kept and again.usage["cached"] == asked


def test_rule_based_teacher_is_exact_and_labelled(tmp_path):
  examples = datasets.load_dataset("coin_flip", seed=1)["train"][:50]
  summary = pipelines.teach(examples, method=pipelines.Method.TINYTHINKER,
                            answer_type=AnswerType.YES_NO, output_dir=str(tmp_path),
                            teacher=None, progress=False)
  assert summary.kept == 50 and summary.teacher_accuracy == 1.0
  assert "rule-based" in summary.teacher
  for record in paths.read_jsonl(str(tmp_path / "records.jsonl")):
    flips = record["example"]["question"].count(" flips the coin.")
    assert record["recall"] == f"The coin is flipped {flips} times."
    parity = "even" if flips % 2 == 0 else "odd"
    assert record["analyses"]["A"].startswith(f"{flips} is {parity}, so the coin ends")
    assert record["label"] == ("A" if flips % 2 == 0 else "B")
    assert record["provenance"]["rule_based"] is True
  with pytest.raises(ValueError, match="derives Coin Flip, Tracking Shuffled Objects and "
                                       "Last Letter questions only"):
    pipelines.rule_based_outcome(
        datasets.load_dataset("coin_flip")["train"][0].__class__(
            id="x", question="q", answer="yes"), pipelines.Method.FINETUNE_COT,
        AnswerType.YES_NO)


def _tinythinker_server(replies_by_sample):
  """A scripted teacher whose k-th reply to a question is replies_by_sample[k]."""

  class Server(FaultServer):

    def completion(self, body, index):
      payload = super().completion(body, index)
      asked = sum(1 for r in self.requests if r["messages"] == body["messages"])
      payload["choices"][0]["message"]["content"] = replies_by_sample[asked - 1]
      return payload

  return Server(choices_per_request=1)


def _reply(key_info, correct):
  lines = [f"{l} is {'correct' if l == correct else 'incorrect'}. Because reason {l}."
           for l in "ABCDE"]
  return f"Key Information: {key_info}\nExplanations: " + "\n".join(lines)


@pytest.mark.parametrize("relabel", [False, True])
def test_tinythinker_pipeline_validates_dedups_and_relabels(tmp_path, shared_data, relabel):
  example = datasets.load_dataset(
      "csqa", str(shared_data / "tinythinker" / "csqa"))["train"][0]
  gold = example.gold_label
  other = "B" if gold != "B" else "C"
  replies = [
      _reply("Sanctions undo the school's efforts to change.", other),
      _reply("Sanctions undo the school's efforts to change!", other),  # near-duplicate
      _reply("The punishing blow cancels progress the school made.", other),
      _reply("A blow against reforms makes the efforts useless.", gold),
      "Key Information: x\nExplanations: A is fine.",  # malformed option line
  ]
  prompts_dir = shared_data / "tinythinker" / "prompts"
  with _tinythinker_server(replies) as server:
    config = TeacherConfig(base_url=server.base_url, model="scripted", **FAST)
    settings = pipelines.TinyThinkerSettings(
        num_samples=5, relabel_by_majority=relabel, few_shot="system", format_retries=0,
        instruction_file=str(prompts_dir / "request.json"),
        exemplar_file=str(prompts_dir / "csqa_cot.json"))
    summary = pipelines.teach([example], method=pipelines.Method.TINYTHINKER,
                              answer_type=AnswerType.LETTER, output_dir=str(tmp_path),
                              teacher=config, tinythinker=settings, progress=False)
    system, user = server.requests[0]["messages"]
  assert system["role"] == "system" and system["content"].count("###\n") == 8
  assert system["content"].startswith("Reference examples delimited with ###")
  assert user["content"].endswith(
      f"Key Information:\nExplanations: {gold} is correct. Because\n" +
      "\n".join(f"{l} is incorrect. Because" for l in "ABCDE" if l != gold))
  assert summary.samples == 5 and summary.dropped["format"] == 1
  assert summary.teacher_accuracy == pytest.approx(1 / 4)
  records = paths.read_jsonl(str(tmp_path / "records.jsonl"))
  if relabel:  # Three valid samples vote for `other`; one near-duplicate is dropped.
    assert [r["label"] for r in records] == [other, other]
    assert all(r["relabelled_from"] == gold for r in records)
    assert summary.dropped["near-duplicate key information"] == 1
  else:
    assert [r["label"] for r in records] == [gold]
    assert records[0]["recall"] == "A blow against reforms makes the efforts useless."
    assert records[0]["analyses"]["A"] == "reason A."
    assert summary.dropped["teacher disagrees with the label"] == 3
    # The pipeline report's teacher row, by hand: 5 samples, 4 parsed, 1 kept.
    row = reports.teacher_row("tinythinker/train", dataclasses.asdict(summary))
    assert row == ("| tinythinker/train | scripted @ " + server.base_url + " (chat) | 1 | 5 "
                   "| 80.0% | 1 (20.0%) | format: 1 (20%), teacher disagrees with the "
                   "label: 3 (60%) | 0 (0) | 25.0% |")
  dropped = [json.loads(l) for l in (tmp_path / "dropped.jsonl").read_text().splitlines()]
  assert all(d["gold"] == gold for d in dropped)  # Disagreements can be read off.
  assert summary.parse_rate == pytest.approx(4 / 5)


def _structured_reply(key_info, correct, labels="ABCDE"):
  return json.dumps({"key_information": key_info, "explanations": [
      {"option": l, "verdict": "correct" if l == correct else "incorrect",
       "explanation": f"Because reason {l}."} for l in labels]})


def test_tinythinker_structured_output_with_retries_and_resume(tmp_path, shared_data):
  """The JSON path end to end against an OpenAI-compatible server: a per-question
  schema in `response_format`, exemplars as chat turns, unparsable replies retried
  with new seeds, and a rerun served from the cache."""
  csqa = datasets.load_dataset("csqa", str(shared_data / "tinythinker" / "csqa"))["train"]
  examples = csqa[:2]
  prompts_dir = shared_data / "tinythinker" / "prompts"

  class JsonServer(FaultServer):
    """Answers with the schema's JSON: the first reply of each question is cut
    off (max_tokens), every other reply is valid and marks the gold option."""

    def completion(self, body, index):
      payload = super().completion(body, index)
      schema = body["response_format"]["schema"]
      explanations = schema["properties"]["explanations"]  # 'one_of': N alternatives.
      items = explanations.get("oneOf", [explanations])[0]["prefixItems"]
      labels = "".join(i["properties"]["option"]["enum"][0] for i in items)
      example = next(e for e in examples if body["messages"][-1]["content"].startswith(
          e.question))
      # Key information far apart in edit distance, so that none is a duplicate.
      word = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
              "india", "juliet"][index % 10]
      reply = _structured_reply(" ".join([word] * 4) + f" of {example.id}.",
                                example.answer, labels)
      if "seed" not in body and index % 4 == 1:
        reply = reply[:40]
      payload["choices"][0]["message"]["content"] = reply
      return payload

  settings = pipelines.TinyThinkerSettings(
      num_samples=2, num_shots=2, structured_output="json_object", format_retries=2,
      instruction_file=str(prompts_dir / "request.json"),
      exemplar_file=str(prompts_dir / "csqa_cot.json"))
  kwargs = dict(method=pipelines.Method.TINYTHINKER, answer_type=AnswerType.LETTER,
                output_dir=str(tmp_path), tinythinker=settings, progress=False)
  with JsonServer(choices_per_request=1) as server:
    config = TeacherConfig(base_url=server.base_url, model="scripted", max_concurrency=1,
                           **FAST)
    summary = pipelines.teach(examples, teacher=config, **kwargs)
    requests = list(server.requests)
  first = requests[0]
  assert first["response_format"]["type"] == "json_object"
  assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant",
                                                   "user", "assistant", "user"]
  assert json.loads(first["messages"][2]["content"])["key_information"]
  assert first["max_tokens"] > 256  # Budgeted for the whole object.
  retries = [r for r in requests if "seed" in r]
  cut = sum(1 for i, r in enumerate(requests, 1) if "seed" not in r and i % 4 == 1)
  assert cut >= 1 and len(retries) == cut and len({r["seed"] for r in retries}) == cut
  assert summary.format_retries == summary.recovered_by_retry == cut
  assert summary.samples == 4 and summary.parse_rate == 1.0 and summary.kept == 4
  assert summary.settings["structured_output"] == "json_object"
  records = paths.read_jsonl(str(tmp_path / "records.jsonl"))
  assert {r["sample_index"] for r in records} == {0, 1}
  for r in records:
    assert json.loads(r["raw_reply"])["key_information"] == r["recall"]
    assert r["rationale_text"].startswith(f"Key Information: {r['recall']}\nExplanations: "
                                          "A is ")
    assert r["analyses"]["B"] == "reason B."
  with JsonServer(choices_per_request=1) as server:
    config = TeacherConfig(base_url=server.base_url, model="scripted", **FAST)
    again = pipelines.teach(examples, teacher=config, **kwargs)
    assert server.requests == []  # Structured requests and their retries are cached.
  assert again.kept == 4 and again.recovered_by_retry == cut


def test_finetune_cot_step_two_constrained_to_the_labels(tmp_path, shared_data):
  example = datasets.load_dataset(
      "csqa", str(shared_data / "tinythinker" / "csqa"))["train"][0]

  class Server(FaultServer):

    def completion(self, body, index):
      payload = super().completion(body, index)
      if "response_format" in body:
        enum = body["response_format"]["json_schema"]["schema"]["properties"]["answer"]
        assert enum["enum"] == list(example.labels)
        payload["choices"][0]["message"]["content"] = json.dumps(
            {"answer": example.answer})
      return payload

  with Server(choices_per_request=1) as server:
    config = TeacherConfig(base_url=server.base_url, model="scripted", **FAST)
    summary = pipelines.teach(
        [example], method=pipelines.Method.FINETUNE_COT, answer_type=AnswerType.LETTER,
        output_dir=str(tmp_path), teacher=config, progress=False,
        finetune_cot=pipelines.FinetuneCotSettings(structured_output="json_schema"))
    step1, step2 = server.requests
  assert "response_format" not in step1 and step2["response_format"]["type"] == "json_schema"
  assert summary.kept == 1 and summary.teacher_accuracy == 1.0


@pytest.mark.parametrize("mode", ["none", "json_object"])
def test_summary_says_whether_one_correct_option_was_enforced(tmp_path, shared_data, mode):
  """Text replies are not constrained; an endpoint that ignores the schema and
  marks two options correct is named as not enforcing it."""
  example = datasets.load_dataset(
      "csqa", str(shared_data / "tinythinker" / "csqa"))["train"][0]
  gold = example.gold_label
  two = _reply("Sanctions undo the school's efforts to change.", gold).replace(
      f"{'B' if gold != 'B' else 'C'} is incorrect", f"{'B' if gold != 'B' else 'C'} is correct")
  with _tinythinker_server([two, _reply("A blow against the reforms.", gold)]) as server:
    config = TeacherConfig(base_url=server.base_url, model="scripted", **FAST)
    settings = pipelines.TinyThinkerSettings(num_samples=2, format_retries=0,
                                             structured_output=mode)
    summary = pipelines.teach([example], method=pipelines.Method.TINYTHINKER,
                              answer_type=AnswerType.LETTER, output_dir=str(tmp_path),
                              teacher=config, tinythinker=settings, progress=False)
  assert summary.kept == 1 and summary.dropped == {"not exactly one option marked correct": 1}
  note = json.loads((tmp_path / "summary.json").read_text())["settings"][
      "one_correct_constraint"]
  if mode == "none":
    assert note.startswith("not constrained: text replies")
  else:
    assert note.startswith("the schema ('one_of')") and "NOT enforced by this endpoint: 1 " \
        "replies" in note
