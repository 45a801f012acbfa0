"""Preference pairs (`pairs.jsonl` from `tinythinker sample`) as DPO's arrays.

One array folder per stage (`recall`, `analyze`) with the prompt, the chosen
and rejected targets (EOS-terminated, 0-padded) and their reference
log-probabilities; `prepare` writes them once per pairs file and lengths.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import jax
import numpy as np

from tinythinker_jax import paths, shards, vocabularies
from tinythinker_jax.data import arrays

STAGES = ("recall", "analyze")


def encode_pairs(pairs: Sequence[dict[str, Any]], codec: vocabularies.TextCodec,
                 input_length: int, target_length: int
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
  """Arrays per stage; pairs that do not fit the lengths are dropped and counted
  (truncating them would make the stored reference log-probabilities wrong)."""
  rows: dict[str, list[tuple]] = {s: [] for s in STAGES}
  dropped = collections.Counter()
  for p in pairs:
    enc = codec.encode(p["prompt"]) + [codec.eos_id]
    chosen = codec.encode(p["chosen"]) + [codec.eos_id]
    rejected = codec.encode(p["rejected"]) + [codec.eos_id]
    if len(enc) > input_length:
      dropped["prompt_too_long"] += 1
    elif max(len(chosen), len(rejected)) > target_length:
      dropped["target_too_long"] += 1
    else:
      rows[p["stage"]].append((enc, chosen, rejected, p["reference_chosen_logp"],
                               p["reference_rejected_logp"]))
  out = {}
  for stage, items in rows.items():
    if not items:
      continue
    def pad(seqs, length):
      array = np.zeros((len(seqs), length), np.int32)
      for i, ids in enumerate(seqs):
        array[i, :len(ids)] = ids
      return array
    out[stage] = {
        "encoder_input_tokens": pad([r[0] for r in items], input_length),
        "chosen_target_tokens": pad([r[1] for r in items], target_length),
        "rejected_target_tokens": pad([r[2] for r in items], target_length),
        "reference_chosen_logps": np.array([r[3] for r in items], np.float32),
        "reference_rejected_logps": np.array([r[4] for r in items], np.float32)}
  return out, dict(dropped)


def prepare(pairs_path: paths.PathLike, data_dir: paths.PathLike,
            codec: vocabularies.TextCodec, input_length: int, target_length: int
            ) -> dict[str, Any]:
  data_dir = paths.as_path(data_dir)
  manifest_path = data_dir / "manifest.json"
  source = {"pairs": paths.absolute_str(pairs_path),
            "size": paths.as_path(pairs_path).stat().length,
            "input_length": input_length, "target_length": target_length}
  if manifest_path.exists():
    manifest = paths.read_json(manifest_path)
    if manifest["source"] == source:
      return manifest
  if jax.process_index() == 0:
    pairs = shards.read_jsonl(pairs_path)
    encoded, dropped = encode_pairs(pairs, codec, input_length, target_length)
    counts = {}
    for stage, features in encoded.items():
      arrays.write_features(data_dir / stage, features)
      counts[stage] = int(len(features["encoder_input_tokens"]))
    manifest = {"source": source, "counts": counts, "dropped": dropped}
    data_dir.mkdir(parents=True, exist_ok=True)
    shards.write_json_atomically(manifest_path, manifest)
  shards.sync_processes("dpo_data")
  return paths.read_json(manifest_path)
