"""seqio tasks over rationale records, materialised arrays, TinyThinker's schedule."""

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (t5x's `import tasks` from a checkout registers them)
from tinythinker_jax import tasks as rationale_tasks, paths
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.stages import materialize as materialize_lib
from tinythinker_jax.data import arrays, datasets
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.reasoning import formats
from tinythinker_jax.teacher import pipelines


def test_every_dataset_and_format_is_registered():
  for name in ("tinythinker.csqa.tinythinker.recall", "tinythinker.csqa.tinythinker.analyze",
               "tinythinker.obqa.analyze_summarize.summarize",
               "tinythinker.finetune_cot_gsm8k.finetune_cot",
               "tinythinker.strategyqa.step_by_step.predict",
               "tinythinker.strategyqa.step_by_step.explain", "tinythinker.coin_flip.vanilla"):
    assert name in seqio.TaskRegistry.names(), name
  mixture = seqio.get_mixture_or_task("tinythinker.csqa.tinythinker")
  assert {t.name.rsplit(".", 1)[1] for t in mixture.tasks} == {
      "recall", "analyze", "summarize"}
  # Distilling Step-by-Step's two tasks, as one mixture at equal rates.
  mixture = seqio.get_mixture_or_task("tinythinker.strategyqa.step_by_step")
  assert {t.name.rsplit(".", 1)[1]: mixture.get_rate(t) for t in mixture.tasks} == {
      "predict": 1.0, "explain": 1.0}


def test_stage_tasks_materialise_to_the_format_strings(tmp_path, monkeypatch):
  examples = datasets.load_dataset("coin_flip", seed=2)["train"][:12]
  out = tmp_path / "rationales" / "coin_flip" / "tinythinker" / "train"
  pipelines.teach(examples, method=pipelines.Method.TINYTHINKER,
                  answer_type=AnswerType.YES_NO, output_dir=str(out), teacher=None,
                  progress=False)
  records = paths.read_jsonl(str(out / "records.jsonl"))
  texts = [t for r in records
           for pairs in formats.stage_pairs(datasets.Example.from_json(r["example"]),
                                            r["recall"], r["analyses"]).values()
           for p in pairs for t in (p.inputs, p.targets)]
  spm = vocabularies.train_sentencepiece(texts, 200, str(tmp_path / "spm"),
                                         model_type="word", hard_vocab_limit=False)
  monkeypatch.setenv(rationale_tasks.RECORDS_DIR_ENV, str(tmp_path / "rationales"))
  monkeypatch.setenv(rationale_tasks.VOCAB_ENV, spm)
  vocab = rationale_tasks.default_vocabulary()
  record = records[0]
  expected = formats.stage_pairs(datasets.Example.from_json(record["example"]),
                                 record["recall"], record["analyses"])
  counts = {}
  for stage in formats.STAGES_OF[formats.Format.TINYTHINKER]:
    name = f"tinythinker.coin_flip.tinythinker.{stage.value}"
    meta = materialize_lib.materialize(name, "train", {"inputs": 96, "targets": 48},
                                    str(tmp_path / "data" / stage.value))
    counts[stage] = meta["num_examples"]
    data = arrays.ArrayDataset(str(tmp_path / "data" / stage.value))
    first = {k: np.asarray(v[0]) for k, v in data.arrays.items()}
    targets = first["decoder_target_tokens"]
    decoded_targets = vocab.decode([int(t) for t in targets if t > 1])
    assert decoded_targets == expected[stage][0].targets
    assert np.array_equal(first["decoder_input_tokens"][1:], targets[:-1])
    assert first["decoder_loss_weights"].sum() == (targets > 0).sum()
  assert counts == {formats.Stage.RECALL: 12, formats.Stage.ANALYZE: 24,
                    formats.Stage.SUMMARIZE: 12}


def test_interleaved_schedule_follows_tinythinker():
  schedule = arrays.InterleavedSchedule.tinythinker(interval=2, num_options=3)
  located = [schedule.locate(s) for s in range(22)]
  assert [s for s, _ in located[:10]] == ["recall"] * 2 + ["analyze"] * 6 + ["summarize"] * 2
  assert located[10:12] == [("recall", 2), ("recall", 3)]
  assert located[12] == ("analyze", 6) and located[18] == ("summarize", 2)
  assert located[20] == ("recall", 4)


def test_array_batches_are_a_function_of_seed_and_step(tmp_path):
  features = {k: np.arange(10 * 3).reshape(10, 3) + i for i, k in enumerate(arrays.FEATURES)}
  arrays.write_features(str(tmp_path / "d"), features)
  data = arrays.ArrayDataset(str(tmp_path / "d"))
  first = data.batch(seed=1, position=4, batch_size=4)
  again = arrays.ArrayDataset(str(tmp_path / "d")).batch(seed=1, position=4, batch_size=4)
  assert all(np.array_equal(first[k], again[k]) for k in first)
  # Two epochs of batches of 4 visit every example exactly twice in 5 batches.
  seen = np.concatenate([data.indices(1, p, 4) for p in range(5)])
  assert sorted(seen.tolist()) == sorted(list(range(10)) * 2)
  halves = [data.batch(1, 4, 4, local=slice(0, 2)), data.batch(1, 4, 4, local=slice(2, 4))]
  assert np.array_equal(np.concatenate([h["encoder_input_tokens"] for h in halves]),
                        first["encoder_input_tokens"])


def test_summarize_task_metric_uses_the_answer_regex():
  task = rationale_tasks.make_task("t", lambda split: "unused", formats.Format.TINYTHINKER,
                                   formats.Stage.SUMMARIZE, AnswerType.YES_NO,
                                   vocabulary=seqio.ByteVocabulary())
  gold = task.postprocess_fn("So the answer is option B.", example={"answer": b"B"},
                             is_target=True)
  predictions = [task.postprocess_fn(t) for t in ("So the answer is option B.",
                                                  "So the answer is option A.", "nonsense")]
  [metric] = task.metric_fns
  assert metric([gold] * 3, predictions) == {"accuracy": pytest.approx(100 / 3)}


def test_mixture_rates_decide_the_share_of_batches():
  from tinythinker_jax.stages import materialize, phase1  # pylint: disable=import-outside-toplevel

  def rates(name):
    return {n: rate for n, (_, rate) in materialize._expand(name, "unused", "byte").items()}
  # TinyThinker's stage mixtures carry the paper's proportions as rates.
  assert rates("tinythinker.csqa.tinythinker") == {
      "tinythinker.csqa.tinythinker.recall": 1.0,
      "tinythinker.csqa.tinythinker.analyze": 5.0,
      "tinythinker.csqa.tinythinker.summarize": 1.0}
  # A user's mixture: seqio's rates, numbers or rate functions, as registered.
  name = "test.rated_mixture"
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, [("tinythinker.coin_flip.vanilla", 0.7),
                                     ("tinythinker.coin_flip.finetune_cot",
                                      lambda task: 0.3)])
  manifest = {"rates": rates(name)}
  assert manifest["rates"] == {"tinythinker.coin_flip.vanilla": 0.7,
                               "tinythinker.coin_flip.finetune_cot": 0.3}
  sizes = {"tinythinker.coin_flip.vanilla": 100, "tinythinker.coin_flip.finetune_cot": 900}
  schedule = phase1.stream_schedule(manifest, sizes)
  streams = [schedule.locate(step)[0] for step in range(1000)]
  assert streams.count("tinythinker.coin_flip.vanilla") == 700  # the rates, not the sizes
  # Positions within each stream run on without gaps (every batch is used once).
  positions = [schedule.locate(s)[1] for s in range(1000)
               if streams[s] == "tinythinker.coin_flip.finetune_cot"]
  assert positions == list(range(300))
  # A manifest written before rates were recorded keeps its size-based schedule.
  old = phase1.stream_schedule({}, sizes)
  assert [old.locate(s)[0] for s in range(1000)].count("tinythinker.coin_flip.vanilla") == 100
  # TinyThinker's interleaving, when asked for, wins over the rates.
  stages = {"recall": 10, "analyze": 50, "summarize": 10}
  assert phase1.stream_schedule({"rates": {}}, stages, interleave_interval=4,
                               num_options=5).steps_per_cycle == (4, 20, 4)
