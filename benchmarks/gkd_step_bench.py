"""Times one on-policy distillation step (the student samples its completions, the
teacher scores them, the student's backward pass) of ours against TRL's
`GKDTrainer` on the same tiny Llama models and prompts, on this machine.

Both: fully on-policy (TRL's `lmbda=1`), generalized JSD with beta 0.5,
temperature 1, sampling at temperature 1 with no top-k/top-p, `max_new_tokens`
completion tokens at most, AdamW, the same thread count. The models are random
Llamas (a student and a wider, deeper teacher) written once as Hugging Face
folders, which both sides load. After warm-up the median step of each is
reported; TRL's is read from its trainer's own `training_step` timings.
(Random models rarely sample EOS, so both sides nearly always decode the full
length; the sampled tokens themselves differ.)

  python benchmarks/gkd_step_bench.py --batch=8 --prompt_length=32 --new_tokens=64
TRL is not a dependency of the project: install it beside it, e.g.
  pip install --target /tmp/trl trl datasets && PYTHONPATH=/tmp/trl python ...
(an iterable dataset of rows: a `datasets.Dataset`'s fingerprinting can fail on a
mismatched pyarrow)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def llama_config(vocab: int, width: int, layers: int):
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=2,
      eos_token_id=1, pad_token_id=0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt_length", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=2048)
  parser.add_argument("--student_width", type=int, default=64)
  parser.add_argument("--teacher_width", type=int, default=128)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--folder", default="/tmp/gkd_step_bench")
  args = parser.parse_args()

  import jax
  import numpy as np
  import torch
  import transformers

  from tinythinker_jax import weights
  from tinythinker_jax.training import distillation, optimizers
  from tinythinker_jax.training import step as step_lib

  torch.manual_seed(0)
  folders = {}
  for name, width, layers in (("student", args.student_width, 2),
                              ("teacher", args.teacher_width, 4)):
    folders[name] = os.path.join(args.folder, name)
    transformers.LlamaForCausalLM(llama_config(args.vocab, width, layers)).save_pretrained(
        folders[name])
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, args.vocab, (args.steps + 2, args.batch, args.prompt_length))

  # ---------------------------------------------------------------- ours
  student = weights.load(folders["student"], require_vocabulary=False)
  teacher = weights.load(folders["teacher"], require_vocabulary=False)
  objective = distillation.DistillationObjective(
      student.model, teacher.model, args.vocab, distillation.DistillSettings(
          beta=0.5, on_policy_fraction=1.0, sample_temperature=1.0))
  optimizer = optimizers.make_optimizer("adamw", 1e-5)
  step = jax.jit(step_lib.make_train_step(objective, optimizer), donate_argnums=(0,))
  state = step_lib.TrainState.create(student.params, optimizer)
  placeholder = np.ones((args.batch, args.new_tokens), np.int32)
  ours = []
  for i, batch_prompts in enumerate(prompts):
    batch = {"encoder_input_tokens": batch_prompts.astype(np.int32),
             "decoder_target_tokens": placeholder,
             "decoder_loss_weights": placeholder}
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(0),
                          {"teacher": teacher.params, "on_policy": np.bool_(True)})
    jax.block_until_ready(metrics["loss"])
    if i >= 2:
      ours.append(time.perf_counter() - start)
  ours_tokens = float(metrics["target_tokens"])

  # ---------------------------------------------------------------- TRL
  from trl.experimental.gkd import GKDConfig, GKDTrainer  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, models  # pylint: disable=import-outside-toplevel
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer(models.WordLevel(
          {f"t{i}": i for i in range(args.vocab)}, unk_token="t2")),
      pad_token="t0", eos_token="t1", unk_token="t2")
  flat = prompts.reshape(-1, args.prompt_length)
  import datasets  # pylint: disable=import-outside-toplevel
  rows = [{"prompt_ids": [int(t) for t in p]} for p in flat]
  dataset = datasets.IterableDataset.from_generator(lambda: iter(rows))

  def collate(rows):
    ids = torch.tensor([r["prompt_ids"] for r in rows], dtype=torch.long)
    mask = torch.ones_like(ids)
    # Labels only give the Trainer a non-zero token count to normalise by (all -100
    # would divide by zero); the on-policy step replaces them with the samples'.
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone(),
            "prompts": ids, "prompt_attention_mask": mask}

  timings = []

  class Timed(GKDTrainer):
    def training_step(self, *a, **k):
      start = time.perf_counter()
      out = super().training_step(*a, **k)
      timings.append(time.perf_counter() - start)
      return out

  config = GKDConfig(output_dir=os.path.join(args.folder, "trl"), lmbda=1.0, beta=0.5,
                     temperature=1.0, max_new_tokens=args.new_tokens,
                     per_device_train_batch_size=args.batch, max_steps=args.steps + 2,
                     learning_rate=1e-5, report_to=[], save_strategy="no",
                     logging_strategy="no", use_cpu=True, dataloader_num_workers=0,
                     max_length=args.prompt_length + args.new_tokens, bf16=False)
  trainer = Timed(model=transformers.AutoModelForCausalLM.from_pretrained(folders["student"]),
                  teacher_model=transformers.AutoModelForCausalLM.from_pretrained(
                      folders["teacher"]),
                  args=config, train_dataset=dataset, processing_class=tokenizer,
                  data_collator=collate)
  trainer.train()
  theirs = timings[2:]

  a, b = statistics.median(ours), statistics.median(theirs)
  print(f"on-policy distillation step: batch {args.batch}, prompt {args.prompt_length}, "
        f"up to {args.new_tokens} sampled tokens, vocab {args.vocab}, student "
        f"{args.student_width}x2, teacher {args.teacher_width}x4; {torch.get_num_threads()} "
        f"torch threads, {jax.device_count()} JAX device(s); our last step trained on "
        f"{ours_tokens:.0f} sampled tokens")
  print(f"| implementation | step (s, median of {len(ours)}) |")
  print("|---|---|")
  print(f"| ours (JAX) | {a:.3f} |")
  print(f"| TRL GKDTrainer (PyTorch) | {b:.3f} |")
  print(f"ratio (TRL step / ours): {b / a:.2f}")


if __name__ == "__main__":
  main()
