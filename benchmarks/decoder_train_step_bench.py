"""Times one training step of a decoder-only student (ours, JAX) against the same
model in transformers' PyTorch (LlamaForCausalLM or GPT2LMHeadModel).

Same configuration (a `models/llama/*.gin` or `models/gpt2/*.gin` file), the same
prompt + completion batch (no padding; the loss over the completion tokens only
in both), AdamW with the same settings, the same thread count, one process.
After warm-up the two are timed in alternating rounds; the median step time of
each is reported with completion tokens per second.

  python benchmarks/decoder_train_step_bench.py --model=llama/smollm2_135m \
      --batch=4 --prompt_length=64 --completion_length=64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="llama/smollm2_135m")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt_length", type=int, default=64)
  parser.add_argument("--completion_length", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--step", choices=("trainer", "plain"), default="trainer",
                      help="'trainer': the project's train step with its state donated "
                           "(what runs); 'plain': value_and_grad + optax, not donated")
  parser.add_argument("--num_embeddings", type=int, default=None,
                      help="the vocabulary size, for model files that leave it to the run "
                           "(default: GPT-2's 50257 for gpt2/*, else the file's)")
  args = parser.parse_args()

  import flax.linen as nn
  import gin
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import torch
  import transformers

  from tinythinker_jax import gin_utils
  from tinythinker_jax.convert import hf_gpt2, hf_llama
  from tinythinker_jax.families.decoder_only import DecoderOnlyModel
  from tinythinker_jax.models import gpt2

  bindings = ["ACTIVATION_DTYPE = 'float32'"]
  vocab = args.num_embeddings or (50257 if args.model.startswith("gpt2") else None)
  if vocab:
    bindings.append(f"NUM_EMBEDDINGS = {vocab}")
  gin_utils.parse([f"models/{args.model}.gin"], bindings)
  config = gin_utils.resolve(gin_utils.query("MODEL_CONFIG"))
  gin.clear_config()
  student = DecoderOnlyModel(config)
  params = nn.unbox(jax.jit(student.init_params)(jax.random.key(0)))

  # The same weights in PyTorch, through our own HF export.
  folder = "/tmp/decoder_train_step_bench_hf"
  host = jax.device_get(params)
  (hf_gpt2.save_hf_gpt2 if isinstance(config, gpt2.GPT2Config)
   else hf_llama.save_hf_llama)(config, host, folder)
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(folder)
  torch_model.train()

  rng = np.random.default_rng(0)
  inputs = rng.integers(3, config.vocab_size, (args.batch, args.prompt_length)).astype(np.int32)
  targets = rng.integers(3, config.vocab_size,
                         (args.batch, args.completion_length)).astype(np.int32)
  optimizer = optax.adamw(1e-4, weight_decay=0.0)
  if args.step == "trainer":
    # The step the trainer runs: its loss (token-mean NLL of the completion), the
    # train state donated to the next step, as `Trainer` jits it.
    # Phase 1's objective: token cross-entropy (with t5x's z-loss, 1e-4) over the
    # completion, every completion token weighted 1.
    from tinythinker_jax.training import objectives
    from tinythinker_jax.training import step as step_lib
    batch = {"encoder_input_tokens": jnp.asarray(inputs),
             "decoder_target_tokens": jnp.asarray(targets),
             "decoder_loss_weights": jnp.ones(targets.shape, jnp.float32)}
    train_step = jax.jit(step_lib.make_train_step(objectives.TokenCrossEntropy(student),
                                                  optimizer), donate_argnums=(0,))
    holder = [step_lib.TrainState.create(params, optimizer)]

    def step(*_):
      holder[0], metrics = train_step(holder[0], batch, jax.random.key(0))
      return None, None, metrics["loss"]
    params = opt_state = None
  else:  # 'plain': value_and_grad and optax in one jit, nothing donated (before #33)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
      def loss_fn(p):
        logps, _ = student.token_logps(p, jnp.asarray(inputs), jnp.asarray(targets))
        return -jnp.mean(logps)
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

  torch_optimizer = torch.optim.AdamW(torch_model.parameters(), lr=1e-4, weight_decay=0.0)
  sequence = torch.tensor(np.concatenate([inputs, targets], 1), dtype=torch.long)
  labels = sequence.clone()
  labels[:, :args.prompt_length] = -100  # The loss on the completion only.

  def torch_step():
    torch_optimizer.zero_grad()
    loss = torch_model(input_ids=sequence, labels=labels).loss
    loss.backward()
    torch_optimizer.step()
    return loss

  params, opt_state, loss = step(params, opt_state)
  jax.block_until_ready(loss)
  torch_step()
  ours, theirs = [], []
  for _ in range(args.rounds):
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state)
    jax.block_until_ready(loss)
    ours.append(time.perf_counter() - start)
    start = time.perf_counter()
    torch_step()
    theirs.append(time.perf_counter() - start)
  tokens = args.batch * args.completion_length
  a, b = statistics.median(ours), statistics.median(theirs)
  print(f"{args.model}: batch {args.batch} x ({args.prompt_length} prompt + "
        f"{args.completion_length} completion) tokens, {torch.get_num_threads()} torch "
        f"threads, {jax.device_count()} JAX device(s)")
  print("| implementation | step (s, median of %d) | completion tokens / s |" % args.rounds)
  print("|---|---|---|")
  print(f"| ours (JAX) | {a:.3f} | {tokens / a:.0f} |")
  print(f"| transformers (PyTorch) | {b:.3f} | {tokens / b:.0f} |")
  print(f"ratio (PyTorch step / ours): {b / a:.2f}")


if __name__ == "__main__":
  main()
