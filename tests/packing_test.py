"""Packing end to end: the numpy packer against seqio's own, packed losses (phase 1
and DPO) against each example run alone, and a packed training run."""

import json
import math

import jax
import numpy as np
import pytest

from tests.conftest import full_and_microbatched, init_params, jitted_forward
from tinythinker_jax import errors
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.families import EncoderDecoderModel
from tinythinker_jax.data import packing, pair_arrays
from tinythinker_jax.models import t5
from tinythinker_jax.training import dpo, objectives
from tinythinker_jax.training import step as step_lib


def _sequences(rng, count, low, high, vocab=128):
  """EOS-terminated random token lists of lengths in [low, high]."""
  out = []
  for _ in range(count):
    ids = rng.integers(3, vocab, rng.integers(low, high + 1)).tolist()
    out.append(ids[:-1] + [1])
  return out


def _pad(seqs, length):
  array = np.zeros((len(seqs), length), np.int32)
  for i, ids in enumerate(seqs):
    array[i, :min(len(ids), length)] = ids[:length]
  return array


def test_numpy_packing_equals_seqio_packing():
  import seqio
  import tensorflow as tf
  rng = np.random.default_rng(0)
  lengths = {"inputs": 24, "targets": 12}
  # More examples than one packing group (max length = 24), a few over-long.
  inputs, targets = _sequences(rng, 70, 2, 10), _sequences(rng, 70, 1, 6)
  for i in (3, 30, 50):
    inputs[i], targets[i + 1] = _sequences(rng, 1, 30, 30)[0], _sequences(rng, 1, 15, 15)[0]

  def dataset(**features):
    names = list(features)
    return tf.data.Dataset.from_generator(
        lambda: ({k: np.asarray(features[k][i], np.int32) for k in names}
                 for i in range(len(features[names[0]]))),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in names})

  def convert(pack):
    # Tasks trim to the lengths before the converter (which checks them).
    trimmed = {k: [s[:lengths[k]] for s in v] for k, v in
               (("inputs", inputs), ("targets", targets))}
    ds = seqio.EncDecFeatureConverter(pack=pack)(dataset(**trimmed), lengths)
    rows = list(ds.as_numpy_iterator())
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  unpacked, expected = convert(False), convert(True)
  ours = packing.pack_features(unpacked)
  assert sorted(ours) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)
  assert len(expected["encoder_input_tokens"]) < len(inputs) / 2  # it did pack

  # Three features packed together (DPO's prompt, chosen and rejected rows),
  # trimmed by the packer itself.
  chosen, rejected = _sequences(rng, 70, 1, 14), _sequences(rng, 70, 1, 14)
  three = {"inputs": 24, "chosen": 12, "rejected": 12}
  ds = seqio.utils.trim_and_pack_dataset(
      dataset(inputs=inputs, chosen=chosen, rejected=rejected), three)
  rows = list(ds.as_numpy_iterator())
  ours, members = packing.pack([{"inputs": np.asarray(a), "chosen": np.asarray(b),
                                 "rejected": np.asarray(c)}
                                for a, b, c in zip(inputs, chosen, rejected)], three)
  for name in rows[0]:
    np.testing.assert_array_equal(ours[name], np.stack([r[name] for r in rows]),
                                  err_msg=name)
  assert sorted(i for m in members for i in m) == list(range(70))
  for name in three:  # segment s of every feature is the same example
    assert (ours[f"{name}_segment_ids"].max(axis=1) ==
            [len(m) for m in members]).all()


def _alone(config, params, enc, targets, enc_length, target_length):
  """float64 logits of one example run alone, zero-padded to fixed lengths (one
  compiled shape; T5 masks encoder padding and the decoder is causal)."""
  dec = np.concatenate([[0], targets[:-1]])
  return np.asarray(jitted_forward(config)(params, _pad([enc], enc_length),
                                           _pad([dec], target_length)), np.float64)[0]


def _hand_token_losses(config, params, enc, targets, label_smoothing, z_loss):
  """Per-token (loss, z term, hit) of one example run alone, in float64."""
  logits = _alone(config, params, enc, targets, 20, 12)
  vocab = logits.shape[-1]
  confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
  constant = -(confidence * math.log(confidence) + (vocab - 1) * low *
               math.log(low + 1e-20))
  out = []
  for t, gold in enumerate(targets):
    row = logits[t]
    log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
    cross = log_z - ((confidence - low) * row[gold] + low * row.sum()) - constant
    out.append((cross + z_loss * log_z ** 2, z_loss * log_z ** 2, row[gold] >= row.max()))
  return out


def test_packed_phase1_loss_equals_each_example_alone(tiny_config):
  rng = np.random.default_rng(1)
  params = init_params(tiny_config, 4)
  inputs, targets = _sequences(rng, 9, 2, 9), _sequences(rng, 9, 1, 7)
  enc, tgt = _pad(inputs, 20), _pad(targets, 12)
  unpacked = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
              "decoder_input_tokens": np.asarray(step_lib.shift_right(tgt)),
              "decoder_loss_weights": (tgt > 0).astype(np.int32)}
  packed = packing.pack_features(unpacked)
  assert len(packed["encoder_input_tokens"]) < len(enc)
  # The model shifts within segments exactly as the packer does.
  np.testing.assert_array_equal(
      step_lib.shift_right(packed["decoder_target_tokens"], packed["decoder_segment_ids"]),
      packed["decoder_input_tokens"])
  model = objectives.TokenCrossEntropy(EncoderDecoderModel(tiny_config), z_loss=1e-2, label_smoothing=0.1)
  sums = jax.jit(lambda p, b: model.loss_sums(p, b)[1])
  hand = [x for e, t in zip(inputs, targets)
          for x in _hand_token_losses(tiny_config, params, e, t, 0.1, 1e-2)]
  expected = {"loss": sum(h[0] for h in hand), "z_loss": sum(h[1] for h in hand),
              "weight_sum": len(hand), "correct": sum(h[2] for h in hand),
              "num_examples": len(inputs)}
  for batch in (packed, unpacked):
    got = jax.device_get(sums(params, batch))
    for name, value in expected.items():
      np.testing.assert_allclose(float(got[name]), value, rtol=2e-5, err_msg=name)


def _pairs(rng, count):
  words = lambda n: " ".join("".join(chr(97 + c) for c in rng.integers(0, 26, 3))  # noqa
                             for _ in range(n))
  return [{"stage": "recall" if i % 5 else "analyze", "prompt": words(rng.integers(1, 5)),
           "chosen": words(rng.integers(0, 3)), "rejected": words(rng.integers(0, 3)),
           "reference_chosen_logp": float(rng.normal(-30, 5)),
           "reference_rejected_logp": float(rng.normal(-30, 5))} for i in range(count)]


def _hand_logp(config, params, prompt, target):
  """log p(target | prompt) of one sequence run alone, in float64."""
  logits = _alone(config, params, prompt, target, 24, 16)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return float(sum(logits[t, g] - log_z[t] for t, g in enumerate(target)))


@pytest.mark.parametrize("loss_type,nll_normalization", [("sigmoid", "batch_tokens"),
                                                         ("ipo", "sequence")])
def test_packed_dpo_pair_losses_equal_each_pair_alone(tiny_config, loss_type,
                                                      nll_normalization):
  rng = np.random.default_rng(2)
  params = init_params(tiny_config, 5)
  codec = vocabularies.TextCodec("byte")
  pairs = _pairs(rng, 16)
  packed, _ = pair_arrays.encode_pairs(pairs, codec, 24, 16, pack=True)
  unpacked, _ = pair_arrays.encode_pairs(pairs, codec, 24, 16)
  assert packed["recall"]["pair_weights"].shape[1] == packed["analyze"]["pair_weights"].shape[1]
  beta, alpha = 0.5, 0.5
  model = dpo.PreferenceObjective(EncoderDecoderModel(tiny_config), beta=beta, alpha=alpha,
                              loss_type=loss_type, z_loss=1e-3,
                              nll_normalization=nll_normalization)
  policy = jax.jit(model.policy_logps)
  mean_loss = jax.jit(lambda p, b: step_lib.mean_loss(model, p, b))
  for stage in ("recall",):  # (one stage: one compiled shape per function)
    stage_pairs = [p for p in pairs if p["stage"] == stage]
    batch = packed[stage]
    assert len(batch["encoder_input_tokens"]) < len(stage_pairs)
    real = batch["pair_weights"] > 0
    # Slots in row order are the stage's pairs in order (next fit keeps order).
    pc, len_c, pr, len_r, _ = (np.asarray(x)[real] for x in policy(params, batch))
    hand = []
    for i, p in enumerate(stage_pairs):
      prompt = codec.encode(p["prompt"]) + [1]
      chosen, rejected = (codec.encode(p[k]) + [1] for k in ("chosen", "rejected"))
      hand.append((_hand_logp(tiny_config, params, prompt, chosen), len(chosen),
                   _hand_logp(tiny_config, params, prompt, rejected), len(rejected)))
      np.testing.assert_allclose(pc[i], hand[-1][0], rtol=1e-5)
      np.testing.assert_allclose(pr[i], hand[-1][2], rtol=1e-5)
      assert (len_c[i], len_r[i]) == (len(chosen), len(rejected))
    np.testing.assert_array_equal(
        batch["reference_chosen_logps"][real],
        np.float32([p["reference_chosen_logp"] for p in stage_pairs]))
    # The preference and NLL parts per pair, by hand (z-loss is checked as
    # packed == unpacked below).
    prefs, nlls = [], []
    for (c, nc, r, nr), p in zip(hand, stage_pairs):
      rc, rr = p["reference_chosen_logp"], p["reference_rejected_logp"]
      if loss_type == "sigmoid":
        prefs.append(math.log1p(math.exp(-beta * ((c - rc) - (r - rr)))))
      else:
        prefs.append(((c - rc) / nc - (r - rr) / nr - 1 / (2 * beta)) ** 2)
      nlls.append(-c / nc)
    nll = (-sum(h[0] for h in hand) / sum(h[1] for h in hand)
           if nll_normalization == "batch_tokens" else np.mean(nlls))
    loss_p, sums_p = jax.device_get(mean_loss(params, batch))
    loss_u, sums_u = jax.device_get(mean_loss(params, unpacked[stage]))
    metrics = jax.device_get(model.metrics(sums_p))
    np.testing.assert_allclose(float(metrics["preference_loss"]), np.mean(prefs),
                               rtol=2e-5)
    np.testing.assert_allclose(float(metrics["nll"]), nll, rtol=2e-5)
    assert float(sums_p["num_examples"]) == len(stage_pairs)
    np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
    for name in sums_u:
      np.testing.assert_allclose(float(sums_p[name]), float(sums_u[name]), rtol=2e-5,
                                 atol=1e-6, err_msg=name)
    totals_p, totals_u = dpo.PreferenceObjective.batch_totals(batch), \
        dpo.PreferenceObjective.batch_totals(unpacked[stage])
    assert {k: float(v) for k, v in totals_p.items()} == \
        {k: float(v) for k, v in totals_u.items()}


def _teach_small_coin_flip(root, train=256, validation=64):
  from tinythinker_jax.data import datasets
  from tinythinker_jax.data.schema import AnswerType
  from tinythinker_jax.teacher import pipelines
  splits = datasets.load_dataset("coin_flip", seed=0)
  for split, count in (("train", train), ("validation", validation)):
    pipelines.teach(splits[split][:count], method=pipelines.Method.FINETUNE_COT,
                    answer_type=AnswerType.YES_NO,
                    output_dir=str(root / "rationales" / "coin_flip" / "finetune_cot" / split),
                    teacher=None, progress=False)
  texts = [t for e in splits["train"][:train] for t in (e.question, e.rationale)]
  return vocabularies.train_sentencepiece(texts + ["--> yes no"], 128, str(root / "spm"),
                                          model_type="word", hard_vocab_limit=False)


@pytest.mark.slow  # ~35 s of CPU: teaching, seqio materialisation, a 30-step run
def test_packed_training_run_learns_and_matches_seqio(tmp_path, monkeypatch):
  import tasks  # noqa: F401  pylint: disable=unused-import  (registers the tasks)
  from tinythinker_jax import tasks as rationale_tasks
  from tinythinker_jax.stages import materialize as materialize_lib
  from tinythinker_jax.stages import phase1
  from tinythinker_jax.data import arrays
  from tinythinker_jax.training import recipe
  spm = _teach_small_coin_flip(tmp_path, train=192, validation=48)
  task, lengths = "tinythinker.coin_flip.finetune_cot", {"inputs": 128, "targets": 96}
  config = t5.T5Config(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                       num_encoder_layers=2, num_decoder_layers=2,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                       dropout_rate=0.0)
  result = phase1.run(
      model_dir=str(tmp_path / "model"), model_config=config, mixture_or_task_name=task,
      task_feature_lengths=lengths, pack=True, progress=False,
      settings=recipe.TrainSettings(batch_size=8, train_steps=30, optimizer="adamw",
                                    learning_rate=3e-3, data_parallelism=1, log_every=5,
                                    checkpoint_every=30, async_checkpoints=False),
      records_dir=str(tmp_path / "rationales"), vocabulary=spm)
  manifest = json.loads((tmp_path / "model" / "data" / "manifest.json").read_text())
  assert manifest["packed"] and manifest["sequences"][task]["train"] == 192
  assert manifest["tasks"][task]["train"] < 192 / 2
  rows = [json.loads(line) for line in
          (tmp_path / "model" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < 0.6 * losses[0], losses
  last = result.last_metrics
  assert last["examples"] > 2 * 8  # several examples per packed row
  assert last["tokens_per_s"] > 0 and last["examples_per_s"] > 2 * 8 * last["steps_per_s"]

  # The rows seqio packed for that run equal our packing of seqio's unpacked rows.
  monkeypatch.setenv(rationale_tasks.RECORDS_DIR_ENV, str(tmp_path / "rationales"))
  monkeypatch.setenv(rationale_tasks.VOCAB_ENV, spm)
  meta = materialize_lib.materialize(task, "validation", lengths, str(tmp_path / "unpacked"))
  assert meta["num_sequences"] == meta["num_examples"] == 48 and not meta["packed"]
  unpacked = arrays.ArrayDataset(str(tmp_path / "unpacked"))
  seqio_packed = arrays.ArrayDataset(str(tmp_path / "model" / "data" / task / "validation"))
  assert seqio_packed.packed and seqio_packed.num_examples < 48 / 2
  ours = packing.pack_features({k: np.asarray(v) for k, v in unpacked.arrays.items()})
  assert sorted(ours) == sorted(seqio_packed.arrays)
  for name, array in seqio_packed.arrays.items():
    np.testing.assert_array_equal(ours[name], array, err_msg=name)


def test_packed_pairs_from_file_train_and_microbatch_exactly(tiny_config, tmp_path):
  import optax
  from tinythinker_jax.data import arrays
  rng = np.random.default_rng(3)
  pairs = [dict(p, stage="recall") for p in _pairs(rng, 24)]
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
  codec = vocabularies.TextCodec("byte")
  manifest = pair_arrays.prepare(str(path), str(tmp_path / "data"), codec, 64, 24,
                                 pack=True)
  assert manifest["pairs"] == {"recall": 24} and manifest["counts"]["recall"] < 12
  data = arrays.ArrayDataset(str(tmp_path / "data" / "recall"),
                             dpo.PACKED_PREFERENCE_FEATURES)
  batch = arrays.BatchSource({"recall": data}, batch_size=4, seed=0)(0)
  params = init_params(tiny_config, 6)
  model = dpo.PreferenceObjective(EncoderDecoderModel(tiny_config), beta=0.5, alpha=0.5)
  # The reference is the initial policy: the preference loss starts at log 2.
  pc, _, pr, _, _ = jax.jit(model.policy_logps)(params, batch)
  batch = dict(batch, reference_chosen_logps=np.asarray(pc),
               reference_rejected_logps=np.asarray(pr))
  one, (s_one, m_one), (_, m_two) = full_and_microbatched(model, optax.adam(1e-2), params,
                                                          batch)
  for name in ("loss", "grad_norm", "examples", "nonpadding_tokens"):
    np.testing.assert_allclose(float(m_two[name]), float(m_one[name]), rtol=1e-5)
  np.testing.assert_allclose(float(m_one["preference_loss"]), math.log(2), rtol=1e-5)
  assert float(m_one["examples"]) == float(batch["pair_weights"].sum()) > 4
  assert float(m_one["nonpadding_tokens"]) == sum(
      np.count_nonzero(batch[k]) for k in ("encoder_input_tokens", "chosen_target_tokens",
                                           "rejected_target_tokens"))
  for _ in range(15):
    s_one, metrics = one(s_one, batch, jax.random.key(0))
  assert float(metrics["margin"]) > 0 and float(metrics["loss"]) < float(m_one["loss"])


def test_multitask_batches_pair_examples_and_weight_each_task_mean(tmp_path):
  """Distilling Step-by-Step's batches: each task's rows of the same examples, and
  loss weights whose weighted token sum over their sum is alpha x the predict
  rows' mean token loss + (1 - alpha) x the explain rows'."""
  from tinythinker_jax.data import arrays
  rng = np.random.default_rng(0)
  n, length = 10, 6
  lengths = {"predict": rng.integers(1, 3, n), "explain": rng.integers(2, length + 1, n)}
  for task, sizes in lengths.items():
    targets = np.zeros((n, length), np.int32)
    for i, k in enumerate(sizes):
      targets[i, :k] = 100 * (task == "explain") + i + 1  # the row's example, by value
    arrays.write_features(tmp_path / task, {
        "encoder_input_tokens": targets, "decoder_input_tokens": targets,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.int32)})
  datasets = {t: arrays.ArrayDataset(tmp_path / t) for t in lengths}
  alpha = 0.3
  source = arrays.MultiTaskSource(datasets, 8, seed=1,
                                  task_weights={"predict": alpha, "explain": 1 - alpha})
  for step in range(4):  # crosses an epoch (10 examples, 4 a step)
    batch = source(step)
    predict, explain = batch["decoder_target_tokens"][:4], batch["decoder_target_tokens"][4:]
    assert (predict[:, 0] + 100 == explain[:, 0]).all()  # the same examples, in order
    token_loss = rng.random(batch["decoder_target_tokens"].shape)
    w = batch["decoder_loss_weights"]
    mask = batch["decoder_target_tokens"] > 0
    expected = (alpha * token_loss[:4][mask[:4]].mean() +
                (1 - alpha) * token_loss[4:][mask[4:]].mean())
    np.testing.assert_allclose((w * token_loss).sum() / w.sum(), expected, rtol=1e-6)
  # Local slices of the global batch (several processes) are its rows.
  half = arrays.MultiTaskSource(datasets, 8, seed=1, local=slice(4, 8),
                                task_weights={"predict": alpha, "explain": 1 - alpha})
  np.testing.assert_array_equal(half(2)["decoder_loss_weights"],
                                source(2)["decoder_loss_weights"][4:])
  with pytest.raises(errors.UserError, match="multiple"):
    arrays.MultiTaskSource(datasets, 7, 1, {"predict": 0.5, "explain": 0.5})
