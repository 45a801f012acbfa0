"""A Llama-family student behind the model interface, trained by the project's
trainer on prompt -> completion batches: one device against an FSDP mesh of 8
fake devices, the loss on completion tokens only, and the trained student's
cached greedy decoding."""

import jax
import numpy as np
import pytest

from tests.conftest import staggered_chooser
from tests.trainer_test import assert_trees_close, copy_task
from tinythinker_jax import partitioning
from tinythinker_jax.families.decoder_only import DecoderOnlyModel
from tinythinker_jax.models import llama
from tinythinker_jax.training import objectives, optimizers, trainer

CONFIG = llama.LlamaConfig(vocab_size=32, emb_dim=32, num_heads=4, num_kv_heads=2,
                           head_dim=8, mlp_dim=64, num_layers=2, max_position_embeddings=64)


def run(model_dir, *, data=1, model=1, param_dims=1, steps=6, lr=3e-3):
  student = DecoderOnlyModel(CONFIG)
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(data, model),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=param_dims))
  schedule = optimizers.make_schedule("constant", learning_rate=lr, warmup_steps=2)
  return trainer.train(
      model=student, objective=objectives.TokenCrossEntropy(student),
      optimizer=optimizers.make_optimizer("adamw", schedule, param_axes=(
          optimizers.param_logical_axes(student.abstract_params()))),
      partitioner=partitioner, batch_fn=copy_task(CONFIG.vocab_size, 8),
      global_batch_size=8, train_steps=steps, model_dir=str(model_dir),
      checkpoint=trainer.CheckpointSettings(save_every=1000, keep=1), log_every=1,
      schedule=schedule, progress=False)


def test_fsdp_mesh_matches_one_device(tmp_path):
  single = run(tmp_path / "one")
  sharded = run(tmp_path / "mesh", data=2, model=4, param_dims=2)
  np.testing.assert_allclose(sharded.last_metrics["loss"], single.last_metrics["loss"],
                             rtol=1e-5)
  assert_trees_close(sharded.state.params, single.state.params)
  kernel = sharded.state.params["layers_0"]["mlp"]["gate_kernel"]
  assert kernel.sharding.is_equivalent_to(jax.sharding.NamedSharding(
      kernel.sharding.mesh, jax.sharding.PartitionSpec("data", "model")), kernel.ndim)


def test_trained_student_copies_its_prompt(tmp_path):
  """Trained on 'copy the prompt' (completion = prompt + EOS): the loss falls
  and cached greedy decoding of unseen prompts writes them back."""
  result = run(tmp_path / "copy", steps=1500)
  assert result.last_metrics["loss"] < 0.15
  batch = copy_task(CONFIG.vocab_size, 8)(10_000)  # Prompts not trained on.
  student = DecoderOnlyModel(CONFIG)
  params = jax.device_get(result.state.params)
  decoded = student.decode(params, batch["encoder_input_tokens"], max_length=10, eos_id=1)
  tokens = np.asarray(decoded.tokens)
  exact = (tokens[:, :9] == batch["decoder_target_tokens"]).all(axis=1)
  assert exact.mean() >= 0.75, tokens


def _configs():
  from tinythinker_jax.models import gpt2
  return {"llama": CONFIG, "gpt2": gpt2.GPT2Config(vocab_size=32, emb_dim=32, num_heads=4,
                                                   num_layers=2, max_position_embeddings=64)}


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_scanned_and_rematerialised_layers_match_the_plain_stack(architecture, tmp_path):
  """scan_layers (parameters stacked by `stacking.stack_layers`) and remat give
  the plain stack's completion log-probs, gradients and cached greedy decoding;
  the layouts convert both ways and an HF export from the scanned layout is the
  plain one's."""
  import dataclasses

  import flax.linen as nn

  from tinythinker_jax.families import decoder_only
  plain = _configs()[architecture]
  scanned = dataclasses.replace(plain, scan_layers=True, remat_policy="full")
  params = nn.unbox(DecoderOnlyModel(plain).init_params(jax.random.key(0)))
  stacked = DecoderOnlyModel(scanned).convert_params(params)
  assert "layers" in stacked and "layers_0" not in stacked
  assert jax.tree.map(np.shape, stacked) == jax.tree.map(
      np.shape, nn.unbox(DecoderOnlyModel(scanned).init_params(jax.random.key(0))))
  assert_trees_close(DecoderOnlyModel(plain).convert_params(stacked), params, atol=0)
  rng = np.random.default_rng(0)
  inputs = np.zeros((3, 6), np.int32)
  targets = np.zeros((3, 5), np.int32)
  for i, (n, m) in enumerate([(6, 5), (3, 2), (4, 4)]):
    inputs[i, :n], targets[i, :m] = rng.integers(2, 32, n), rng.integers(2, 32, m)

  def loss(config, p):
    logps, _ = decoder_only.completion_logps(config, p, inputs, targets)
    return -logps.sum(), logps

  (_, want), grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p), has_aux=True))(
      params)
  (_, got), got_grads = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p),
                                                   has_aux=True))(stacked)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert_trees_close(DecoderOnlyModel(plain).convert_params(got_grads), grads, atol=1e-5)
  decoded = [jax.jit(lambda p, c=c: decoder_only.decode(c, p, inputs, max_length=5,
                                                        eos_id=1).tokens)(p)
             for c, p in ((plain, params), (scanned, stacked))]
  np.testing.assert_array_equal(decoded[0], decoded[1])
  DecoderOnlyModel(scanned).save_hf(stacked, str(tmp_path / "hf"))
  _, exported = DecoderOnlyModel.load_hf(str(tmp_path / "hf"))
  assert_trees_close(exported, jax.tree.map(np.asarray, params), atol=0)


def test_dropout_applies_only_in_training_and_follows_its_rng():
  import dataclasses

  from tinythinker_jax.families import decoder_only
  import flax.linen as nn

  for config in _configs().values():
    noisy = dataclasses.replace(config, dropout_rate=0.3)
    params = nn.unbox(DecoderOnlyModel(config).init_params(jax.random.key(1)))
    inputs = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
    targets = np.array([[3, 4, 1], [6, 1, 0]], np.int32)
    logps = jax.jit(lambda c, key: decoder_only.completion_logps(
        c, params, inputs, targets, key)[0], static_argnums=0)
    clean = logps(config, None)
    np.testing.assert_array_equal(logps(noisy, None), clean)
    key = jax.random.key(2)
    first, again, other = logps(noisy, key), logps(noisy, key), logps(noisy, jax.random.key(3))
    np.testing.assert_array_equal(first, again)
    assert np.abs(np.asarray(first) - np.asarray(clean)).max() > 1e-4
    assert np.abs(np.asarray(first) - np.asarray(other)).max() > 1e-4
    assert (np.asarray(first)[np.asarray(targets) == 0] == 0).all()  # Padding stays 0.


def test_beam_search_equals_brute_force_on_prompts_of_different_lengths():
  """Every complete hypothesis of 3 tokens (vocabulary 6) scored by one
  teacher-forced pass (`completion_logps`, no cache): the widest beam finds the
  best, best first, and the model's `decode(num_beams=...)` returns it."""
  import itertools

  import flax.linen as nn

  from tinythinker_jax.families import decoder_only
  config = llama.LlamaConfig(vocab_size=6, emb_dim=16, num_heads=2, num_kv_heads=1,
                             head_dim=8, mlp_dim=32, num_layers=2)
  params = nn.unbox(DecoderOnlyModel(config).init_params(jax.random.key(4)))
  params["embedding"] = params["embedding"] * 40  # A search problem that is not flat.
  inputs = np.array([[2, 3, 4, 5], [5, 2, 0, 0]], np.int32)
  model = DecoderOnlyModel(config)
  result = jax.jit(lambda p, x: decoder_only.beam_search(
      config, p, x, beam_size=36, max_length=3, eos_id=1))(params, inputs)
  hypotheses = [seq for n in (1, 2, 3) for seq in itertools.product(range(1, 6), repeat=n)
                if 1 not in seq[:-1] and (n == 3 or seq[-1] == 1)]
  targets = np.zeros((len(hypotheses), 3), np.int32)
  for i, seq in enumerate(hypotheses):
    targets[i, :len(seq)] = seq
  score = jax.jit(lambda p, x: decoder_only.completion_logps(config, p, x, targets)[0])
  for row in range(2):
    logps = score(params, np.repeat(inputs[row:row + 1], len(hypotheses), 0))
    scores = np.asarray(logps).sum(-1)
    best = int(np.argmax(scores))
    assert float(result.scores[row, 0]) == pytest.approx(float(scores[best]), abs=1e-4)
    length = int(result.lengths[row, 0])
    assert tuple(np.asarray(result.tokens[row, 0, :length]).tolist()) == hypotheses[best]
  assert np.all(np.diff(np.asarray(result.scores), axis=1) <= 1e-6)  # Best first.
  best = model.decode(params, inputs, max_length=3, num_beams=36)  # The student's path.
  np.testing.assert_array_equal(best.tokens, result.tokens[:, 0])
  np.testing.assert_allclose(best.token_logprobs[:, 0], result.scores[:, 0], atol=1e-5)


def test_packed_rows_give_each_example_its_unpacked_log_probs():
  """Examples packed as seqio packs them (`data.packing.pack_features`) become
  one decoder row of prompt, completion, prompt, ...: every completion token's
  log-probability equals the example's own unpacked one, padding stays 0, and
  the trainer's loss on the packed batch equals the unpacked batch's."""
  import flax.linen as nn

  from tinythinker_jax.data import packing
  from tinythinker_jax.families import decoder_only
  params = nn.unbox(DecoderOnlyModel(CONFIG).init_params(jax.random.key(5)))
  rng = np.random.default_rng(3)
  inputs = np.zeros((5, 6), np.int32)
  targets = np.zeros((5, 5), np.int32)
  for i, (n, m) in enumerate([(3, 2), (2, 4), (6, 5), (1, 1), (4, 3)]):
    inputs[i, :n], targets[i, :m] = rng.integers(2, 32, n), rng.integers(2, 32, m)
    targets[i, m - 1] = 1
  packed = packing.pack_features({"encoder_input_tokens": inputs,
                                  "decoder_target_tokens": targets})
  assert packed["encoder_input_tokens"].shape[0] < 5  # Several examples share a row.
  logps = jax.jit(lambda *a: decoder_only.completion_logps(CONFIG, params, *a)[0])
  got = logps(packed["encoder_input_tokens"], packed["decoder_target_tokens"], None,
              packed["encoder_segment_ids"], packed["decoder_segment_ids"])
  want = logps(inputs, targets)
  got, want = np.asarray(got), np.asarray(want)
  example = 0
  for row in range(got.shape[0]):
    segments = packed["decoder_segment_ids"][row]
    for s in range(1, segments.max() + 1):
      n = int((targets[example] > 0).sum())
      np.testing.assert_allclose(got[row, segments == s], want[example, :n], atol=1e-5)
      example += 1
    assert (got[row, segments == 0] == 0).all()
  assert example == 5
  objective = objectives.TokenCrossEntropy(DecoderOnlyModel(CONFIG))
  unpacked_batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
                    "decoder_loss_weights": (targets > 0).astype(np.float32)}
  packed_batch = dict(packed, decoder_loss_weights=(
      packed["decoder_target_tokens"] > 0).astype(np.float32))
  sums = [jax.jit(lambda b: objective.loss_sums(params, b)[1])(b)
          for b in (unpacked_batch, packed_batch)]
  for key in ("loss", "weight_sum", "num_examples"):
    assert float(sums[0][key]) == pytest.approx(float(sums[1][key]), rel=1e-5), key


PIPELINE_FLAGS = [
    "--gin.STUDENT_FORMATS=('tinythinker',)", "--gin.BASELINES=()",
    "--gin.MATCH_BUDGET=False", "--gin.MAX_TRAIN_EXAMPLES=40",
    "--gin.MAX_VALIDATION_EXAMPLES=4", "--gin.MAX_TEST_EXAMPLES=4", "--gin.EVAL_NUM_RUNS=0",
    "--gin.phase1/recipe.TrainSettings.train_steps=8",
    "--gin.phase1/recipe.TrainSettings.eval_every=4",
    "--gin.phase1/recipe.TrainSettings.checkpoint_every=4",
    "--gin.phase1/recipe.TrainSettings.batch_size=8",
    "--gin.phase1/recipe.TrainSettings.warmup_steps=2",
    "--gin.pipeline.run_pipeline.max_reflect_examples=4",
    "--gin.sample.SampleSettings.num_recall_samples=2",
    "--gin.dpo/recipe.TrainSettings.num_epochs=None",
    "--gin.dpo/recipe.TrainSettings.train_steps=2",
    "--gin.dpo/recipe.TrainSettings.batch_size=4"]


def run_pipeline(run_dir, *flags, model="models/llama/tiny.gin"):
  import subprocess
  import sys

  from tests.conftest import one_device_env
  command = [sys.executable, "-m", "tinythinker_jax.cli.main", "pipeline",
             "--gin_file=runs/demo.gin", f"--gin_file={model}", *PIPELINE_FLAGS,
             f"--gin.RUN_DIR='{run_dir}'", *flags]
  result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env=one_device_env())
  assert result.returncode == 0, result.stderr[-3000:]


def test_pipeline_fine_tunes_a_pretrained_student_with_its_own_tokenizer(tmp_path):
  """PRETRAINED = a tiny HF Llama folder with its byte-level BPE tokenizer and
  chat template (CHAT_TEMPLATE), through phase 1 (TinyThinker's stages and
  Fine-tune-CoT's decoder-only format), self-reflection, evaluation, export and
  the report: every
  student starts from its weights and tokenizes with its tokenizer (pad 0 / EOS 1
  in the project's ids); the export holds the tokenizer and the rows in its
  order: the embedding rows of tokens the run never saw come back unchanged
  (untied embeddings, no weight decay), the rest moved."""
  import json

  import torch
  import transformers

  from tests.hf_tokenizer_test import smollm_like
  from tinythinker_jax.tokenizers import hf_tokenizer
  folder = smollm_like(tmp_path)
  torch.manual_seed(0)
  original = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
      tie_word_embeddings=False))
  original.save_pretrained(str(folder))
  run_dir = tmp_path / "run"
  run_pipeline(run_dir, f"--gin.PRETRAINED='{folder}'", "--gin.NUM_EMBEDDINGS=384",
               "--gin.llama.LlamaConfig.tie_word_embeddings=False",
               "--gin.CHAT_TEMPLATE=True",
               "--gin.STUDENT_FORMATS=('finetune_cot_decoder', 'step_by_step', "
               "'tinythinker')",
               # No validation (model selection is tested with T5 students).
               "--gin.phase1/recipe.TrainSettings.eval_every=0",
               "--gin.phase1/recipe.TrainSettings.early_stop_patience=0")
  meta = json.loads((run_dir / "pipeline.json").read_text())
  assert meta["settings"]["initial_checkpoint_path"] == str(folder)
  for stage in ("train_tinythinker", "reflect", "train_finetune_cot_decoder", "evaluate",
                "export", "report"):
    assert stage in meta["stages"], stage
  assert "Llama-family decoder 64d, 2 layers" in (run_dir / "report" / "report.md").read_text()
  for student in ("tinythinker", "finetune_cot_decoder", "step_by_step", "untrained"):
    report = json.loads((run_dir / "evaluate" / student / "report.json").read_text())
    assert report["greedy"]["num_examples"] == 4
    # Every student, and the model before training, also ranks the options.
    assert report["rank"]["count"] == 4, student
  assert json.loads((run_dir / "evaluate" / "untrained" / "report.json").read_text())[
      "compute"]["train_flops"] == 0
  # Distilling Step-by-Step: predict and explain rows of the same questions in
  # every batch, half each, weighted alpha = 0.5; its records keep every chain.
  from tinythinker_jax.data import arrays as arrays_lib
  data = run_dir / "students" / "step_by_step" / "data"
  predict = arrays_lib.ArrayDataset(next(data.glob("*.predict/train")))
  explain = arrays_lib.ArrayDataset(next(data.glob("*.explain/train")))
  records = next((run_dir / "rationales").glob("*/step_by_step/train/records.jsonl"))
  assert predict.num_examples == len(records.read_text().splitlines())
  assert predict.num_examples == explain.num_examples > 0
  exported = run_dir / "export" / "hf_model"
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
  assert tokenizer.eos_token == "<|im_end|>"
  model = transformers.AutoModelForCausalLM.from_pretrained(str(exported))
  assert model.config.vocab_size == 300
  codec = hf_tokenizer.HFTokenizer(str(folder))
  # Import: phase 1 started from the pretrained rows in project order; the rows
  # of tokens its training arrays never hold kept them exactly (Adam moves no
  # parameter whose gradient is always zero).
  from tinythinker_jax import weights
  from tinythinker_jax.data import arrays
  seen = set()
  for path in (run_dir / "students" / "tinythinker" / "data").glob("*/train"):
    dataset = arrays.ArrayDataset(path)
    for name, values in dataset.arrays.items():
      if name in ("encoder_input_tokens", "decoder_target_tokens"):
        seen.update(np.unique(values).tolist())
  phase1 = weights.load(run_dir / "students" / "tinythinker" / "checkpoints" / "8")
  # The chat template's tokens wrap every prompt (recorded on the model config).
  prefix, suffix = codec.chat_wrapping()
  assert (phase1.config.prompt_prefix_ids, phase1.config.prompt_suffix_ids) == (prefix, suffix)
  seen.update(prefix + suffix)
  before = codec.to_project_rows(original.model.embed_tokens.weight.detach().numpy(), 384)
  rows = np.asarray(phase1.params["embedding"])
  unseen = sorted(set(range(300)) - seen)
  assert unseen, "the tiny tokenizer has pieces the coin-flip arrays do not use"
  np.testing.assert_array_equal(rows[unseen], before[unseen])
  assert np.abs(rows[sorted(seen - {0})] - before[sorted(seen - {0})]).max() > 0
  # Export: the final student's rows back in the tokenizer's order.
  final = weights.load(meta["stages"]["export"]["outputs"]["from"])
  exported_rows = model.model.embed_tokens.weight.detach().numpy()
  np.testing.assert_array_equal(exported_rows[codec.hf_ids[:300]],
                                np.asarray(final.params["embedding"])[:300])


@pytest.mark.parametrize("architecture,scan", [("llama", False), ("gpt2", False),
                                               ("llama", True)])
def test_options_scored_from_one_prefilled_prompt_equal_the_teacher_forced_pass(
    architecture, scan):
  """Rank classification reads a question's prompt once (`continuation_logps`:
  prefill, the cache repeated per option, every option's tokens in one pass):
  each option token's log-probability equals the uncached teacher-forced pass on
  the prompt repeated per option, for prompts of different lengths, options of
  different lengths, a chat template around the prompt, and a scanned stack
  (its cache's layers first)."""
  import dataclasses

  import flax.linen as nn

  from tinythinker_jax.families import decoder_only
  for template in ((), ((3, 4), (5,))):
    config = dataclasses.replace(_configs()[architecture], scan_layers=scan)
    if template:
      config = dataclasses.replace(config, prompt_prefix_ids=template[0],
                                   prompt_suffix_ids=template[1])
    params = nn.unbox(DecoderOnlyModel(config).init_params(jax.random.key(7)))
    inputs = np.array([[2, 3, 4, 5, 6], [7, 8, 0, 0, 0], [9, 0, 0, 0, 0]], np.int32)
    options = np.zeros((3, 4, 3), np.int32)
    rng = np.random.default_rng(1)
    for r in range(3):
      for j in range(4):
        n = 1 + (r + j) % 3
        options[r, j, :n] = rng.integers(2, 32, n)
    got = np.asarray(jax.jit(lambda p, x, o: decoder_only.continuation_logps(
        config, p, x, o))(params, inputs, options))
    want = np.asarray(jax.jit(lambda p, x, t: decoder_only.completion_logps(
        config, p, x, t)[0])(params, np.repeat(inputs, 4, 0), options.reshape(12, 3)))
    want = want.reshape(3, 4, 3)
    real = options > 0
    np.testing.assert_allclose(got[real], want[real], atol=2e-5)
    assert np.abs(want[real]).min() > 0  # real log-probabilities, none masked


def test_a_from_scratch_student_exports_for_transformers_generate(tiny_student, tmp_path):
  """A Llama student trained here from scratch with a SentencePiece vocabulary,
  exported and loaded by transformers (`AutoTokenizer`, `AutoModelForCausalLM`):
  the tokenizer encodes a prompt as the student does (ids, then EOS), the
  generation config is a decoder-only one (EOS 1, pad 0, no decoder start), and
  greedy `generate` writes the student's own greedy completion."""
  import json

  import torch
  import transformers

  from tinythinker_jax import student as student_lib
  from tinythinker_jax.reasoning.chains import Sampling
  from tinythinker_jax.stages import export, phase1
  from tinythinker_jax.training import recipe
  config = llama.LlamaConfig(vocab_size=256, emb_dim=32, num_heads=4, num_kv_heads=2,
                             head_dim=8, mlp_dim=64, num_layers=2,
                             max_position_embeddings=256)
  model_dir = str(tmp_path / "model")
  phase1.run(model_dir=model_dir, model_config=config,
             mixture_or_task_name="tinythinker.coin_flip.tinythinker",
             task_feature_lengths={"inputs": 64, "targets": 64},
             settings=recipe.TrainSettings(batch_size=8, train_steps=3, learning_rate=3e-3,
                                           optimizer="adamw",
                                           data_parallelism=1, checkpoint_every=3,
                                           async_checkpoints=False),
             records_dir=str(tiny_student / "rationales"),
             vocabulary=str(tiny_student / "spm.model"), interleave_interval=1,
             num_options=2, progress=False)
  folder = export.export_student(model_dir, str(tmp_path / "hf"))
  generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
  assert generation == {"eos_token_id": 1, "pad_token_id": 0}
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  ours = student_lib.build(model_dir, settings=student_lib.StudentSettings(
      batch_size=2, max_input_length=64, max_decode_length=8))
  prompt = "A coin is heads up. Ka flips the coin. Is the coin still heads up? Recall:"
  ids = tokenizer(prompt)["input_ids"]
  assert ids == ours.codec.encode(prompt) + [1]
  with torch.no_grad():
    out = hf_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
  generated = out[0, len(ids):].tolist()
  (mine,) = ours.generate([prompt], Sampling())[0:1]
  want = ours.codec.encode(mine[0].text) + ([1] if mine[0].finished else [])
  assert generated[:len(want)] == want


@pytest.mark.parametrize("sampled", [False, True])
def test_finished_rows_set_aside_leave_every_rows_tokens_unchanged(sampled, monkeypatch):
  """The decode loop moves its unfinished rows into smaller batches as rows end
  (`decoding.shrink_levels`: 32 -> 8 -> 2 rows). Rows ending at very different
  steps give the same tokens and log-probabilities as the loop that keeps all 32
  rows to the end, and each row's log-probabilities equal the uncached
  teacher-forced pass over its own tokens."""
  import flax.linen as nn

  from tinythinker_jax import decoding
  from tinythinker_jax.families import decoder_only
  params = nn.unbox(DecoderOnlyModel(CONFIG).init_params(jax.random.key(8)))
  rng = np.random.default_rng(2)
  inputs = np.zeros((32, 6), np.int32)
  for i in range(32):
    n = 1 + i % 6
    inputs[i, :n] = rng.integers(2, 32, n)
  choose, stops = staggered_chooser(32, sampled)

  run = jax.jit(lambda p, x: decoder_only._decode_loop(CONFIG, p, x, 12, 1, choose))
  assert decoding.shrink_levels(32) == [32, 8, 2]
  got = run(params, inputs)
  monkeypatch.setattr(decoding, "shrink_levels", lambda rows: [rows])
  want = jax.jit(lambda p, x: decoder_only._decode_loop(CONFIG, p, x, 12, 1, choose))(
      params, inputs)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(stops) + 1)
  np.testing.assert_allclose(np.asarray(got.token_logprobs),
                             np.asarray(want.token_logprobs), atol=1e-5)
  forced, _ = decoder_only.completion_logps(CONFIG, params, inputs, got.tokens)
  np.testing.assert_allclose(np.asarray(got.token_logprobs), np.asarray(forced),
                             atol=1e-4)
