"""The end-to-end job on the embedded defaults, as far as the project goes so far.

Offline and seeded: generate Coin Flip questions with exact step-by-step
rationales, train a SentencePiece vocabulary on them, train a T5 from scratch
on `question -> rationale --> answer` (Fine-tune-CoT's student format) with the
partitioned train step on every local device, evaluate greedy KV-cached
decoding on held-out questions, and export the student as a Hugging Face T5
folder (reloaded with transformers to check the logits, when it is installed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from tinythinker_jax import decoding, partitioning, vocabularies
from tinythinker_jax.convert import save_hf_t5
from tinythinker_jax.data import synthetic
from tinythinker_jax.models import t5
from tinythinker_jax.training import models
from tinythinker_jax.training import step as train_step_lib

ANSWER_SEPARATOR = " --> "
# Independent random streams, so the held-out questions never depend on training.
_VOCAB_STREAM, _TRAIN_STREAM, _EVAL_STREAM = 0, 1, 2


def _example_text(example: synthetic.CoinFlip) -> tuple[str, str]:
  return example.question, f"{example.rationale}{ANSWER_SEPARATOR}{example.answer}"


def _encode(vocab, texts: list[str], length: int, what: str) -> np.ndarray:
  out = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = list(vocab.encode(text)) + [vocab.eos_id]
    if len(ids) > length:
      raise ValueError(f"{what} of {len(ids)} tokens exceeds length {length}: {text!r}")
    out[i, :len(ids)] = ids
  return out


def _examples(seed: int, stream: int, index: int, count: int, min_people: int,
              max_people: int) -> list[synthetic.CoinFlip]:
  rng = np.random.default_rng([seed, stream, index])
  return [synthetic.coin_flip(rng, int(rng.integers(min_people, max_people + 1)))
          for _ in range(count)]


def _answer(text: str) -> Optional[str]:
  if ANSWER_SEPARATOR.strip() not in text:
    return None
  return text.rsplit(ANSWER_SEPARATOR.strip(), 1)[1].strip()


def run(output_dir: str, *, model_config: t5.T5Config, steps: Optional[int] = None,
        train_steps: int = 300, batch_size: int = 64, learning_rate: float = 2e-3,
        warmup_steps: int = 50, vocab_pieces: int = 128, num_eval: int = 256,
        min_people: int = 2, max_people: int = 4, input_length: int = 64,
        target_length: int = 64, model_parallelism: int = 1, seed: int = 0) -> dict:
  """Runs the demo; writes metrics, a report and the exported model to output_dir."""
  train_steps = steps or train_steps
  os.makedirs(output_dir, exist_ok=True)
  started = time.time()
  print(f"[1/5] vocabulary: SentencePiece word model (<= {vocab_pieces} pieces) on "
        "generated text")
  corpus = [t for ex in _examples(seed, _VOCAB_STREAM, 0, 4000, min_people, max_people)
            for t in _example_text(ex)]
  # The task's vocabulary is closed, so whole words make the shortest sequences.
  spm_path = vocabularies.train_sentencepiece(corpus, vocab_pieces,
                                              os.path.join(output_dir, "spm"), seed=seed,
                                              model_type="word", hard_vocab_limit=False)
  vocab = vocabularies.get_vocabulary(spm_path)
  if model_config.vocab_size < vocab.vocab_size:
    raise ValueError(f"NUM_EMBEDDINGS={model_config.vocab_size} is smaller than the "
                     f"vocabulary ({vocab.vocab_size} tokens)")

  mesh = partitioning.create_mesh(model_parallelism=model_parallelism)
  partitioner = partitioning.Partitioner(mesh)
  model = t5.T5(model_config)
  print(f"[2/5] model: T5 {model_config.emb_dim}d x {model_config.num_encoder_layers}+"
        f"{model_config.num_decoder_layers} layers on a {dict(mesh.shape)} mesh of "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  rng = jax.random.key(seed)
  params, _ = partitioner.init(lambda r: t5.init_params(model_config, r), rng)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                                max(train_steps, warmup_steps + 1))
  optimizer = optax.adamw(schedule, weight_decay=0.01)
  state = partitioner.partition(
      lambda p: train_step_lib.TrainState.create(p, optimizer))(params)
  step_fn = partitioner.partition(
      train_step_lib.make_train_step(models.EncoderDecoderModel(model, z_loss=0.0),
                                     optimizer),
      donate_argnums=(0,))

  def batch_at(index: int) -> dict:
    examples = _examples(seed, _TRAIN_STREAM, index, batch_size, min_people,
                         max_people)
    pairs = [_example_text(ex) for ex in examples]
    targets = _encode(vocab, [p[1] for p in pairs], target_length, "target")
    return partitioner.shard_batch({
        "encoder_input_tokens": _encode(vocab, [p[0] for p in pairs], input_length,
                                        "input"),
        "decoder_input_tokens": np.asarray(train_step_lib.shift_right(targets)),
        "decoder_target_tokens": targets,
    })

  print(f"[3/5] training {n_params / 1e6:.2f}M parameters for {train_steps} steps "
        f"of {batch_size} fresh examples")
  metrics_path = os.path.join(output_dir, "metrics.jsonl")
  with open(metrics_path, "w") as metrics_file, \
      tqdm.trange(train_steps, desc="train", unit="step") as bar:
    for i in bar:
      state, metrics = step_fn(state, batch_at(i), rng)
      if i % 10 == 0 or i == train_steps - 1:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics.update(step=i + 1, learning_rate=float(schedule(i)))
        metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()
        bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                        token_acc=f"{metrics['accuracy']:.3f}")
  final_loss = metrics["loss"]

  print(f"[4/5] greedy KV-cached decoding of {num_eval} held-out questions")
  held_out = _examples(seed, _EVAL_STREAM, 0, num_eval, min_people, max_people)
  enc = _encode(vocab, [ex.question for ex in held_out], input_length, "input")
  greedy = jax.jit(lambda p, e: decoding.greedy_decode(model, p, e,
                                                       max_length=target_length))
  with partitioner.activate():
    result = jax.device_get(greedy(state.params, partitioner.shard_batch(enc)))
  correct = rationale_exact = 0
  samples = []
  for ex, tokens, length in zip(held_out, result.tokens, result.lengths):
    text = vocab.decode([int(t) for t in tokens[:length] if t != vocab.eos_id])
    correct += _answer(text) == ex.answer
    rationale_exact += text.split(" -->")[0].strip() == ex.rationale
    if len(samples) < 3:
      samples.append({"question": ex.question, "output": text, "gold": ex.answer})
  accuracy = correct / num_eval

  print("[5/5] export to a Hugging Face T5 folder")
  hf_dir = os.path.join(output_dir, "hf_model")
  params_host = jax.device_get(state.params)
  save_hf_t5(model_config.replace(dtype="float32"), params_host, hf_dir)
  shutil.copy(spm_path, os.path.join(hf_dir, "spiece.model"))
  hf_check = _check_with_transformers(model_config, params_host, hf_dir, enc[:8])

  report = {
      "task": f"coin flip, {min_people}-{max_people} people (rule-generated rationales)",
      "format": "question -> rationale --> answer (Fine-tune-CoT)",
      "parameters": n_params, "train_steps": train_steps, "batch_size": batch_size,
      "final_train_loss": final_loss, "held_out_examples": num_eval,
      "held_out_accuracy": accuracy, "rationale_exact_match": rationale_exact / num_eval,
      "chance_accuracy": 0.5, "samples": samples, "hf_export": hf_check,
      "devices": jax.device_count(), "mesh": dict(mesh.shape),
      "seconds": round(time.time() - started, 1),
  }
  with open(os.path.join(output_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
  for s in samples:
    print(f"  Q: {s['question']}\n  A: {s['output']}   (gold: {s['gold']})")
  return report


def _check_with_transformers(model_config: t5.T5Config, params, hf_dir: str,
                             enc: np.ndarray) -> dict:
  """Reloads the export in transformers and compares logits with ours."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {"path": hf_dir, "checked": False,
            "reason": "transformers is not installed (pip install -e '.[test]')"}
  logging.getLogger("transformers").setLevel(logging.ERROR)
  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  dec = np.zeros((enc.shape[0], 4), np.int32)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                   attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  ours = np.asarray(t5.T5(model_config.replace(dtype="float32")).apply(
      {"params": params}, jnp.asarray(enc), jnp.asarray(dec)))
  return {"path": hf_dir, "checked": True,
          "max_abs_logit_difference": float(np.abs(ref - ours).max())}
