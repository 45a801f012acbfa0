"""Preference pairs (`pairs.jsonl` from `tinythinker sample`) as DPO's arrays.

One array folder per stage (`recall`, `analyze`) with the prompt, the chosen
and rejected targets (EOS-terminated, 0-padded) and their reference
log-probabilities; `prepare` writes them once per pairs file and lengths.

With `pack=True` each stage's pairs are packed as seqio packs three features
(`data.packing.pack` over prompt, chosen and rejected, seqio's next fit):
a pair joins a row only if its prompt, chosen and rejected sequences all fit,
so segment `s` of the row's prompt, chosen and rejected rows is one pair, and
its reference log-probabilities sit in column `s - 1` of the per-pair arrays
(`[rows, max pairs per row]`, the same width for every stage so that one
compiled step serves them all; `pair_weights` marks the real pairs). The
alternative, chosen and rejected as separate examples joined by a pair index,
would put a pair's two halves in different rows and batches.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import jax
import numpy as np

from tinythinker_jax import errors, paths, shards
from tinythinker_jax.data import schema
from tinythinker_jax.data import arrays, packing

STAGES = ("recall", "analyze")


def encode_pairs(pairs: Sequence[Any], codec: Any,
                 input_length: int, target_length: int, pack: bool = False
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
  """Arrays per stage; pairs that do not fit the lengths are dropped and counted
  (truncating them would make the stored reference log-probabilities wrong)."""
  rows: dict[str, list[tuple]] = {s: [] for s in STAGES}
  dropped = collections.Counter()
  for p in pairs:
    if isinstance(p, dict):
      p = schema.PreferencePair.from_json(p)
    enc = codec.encode(p.prompt) + [codec.eos_id]
    chosen = codec.encode(p.chosen) + [codec.eos_id]
    rejected = codec.encode(p.rejected) + [codec.eos_id]
    if len(enc) > input_length:
      dropped["prompt_too_long"] += 1
    elif max(len(chosen), len(rejected)) > target_length:
      dropped["target_too_long"] += 1
    else:
      if p.reference_chosen_logp is None or p.reference_rejected_logp is None:
        raise errors.DataError(f"pair of {p.example_id or p.prompt[:40]!r}: no reference "
                               "log-probabilities (sample it with `tinythinker sample`)")
      rows[p.stage].append((enc, chosen, rejected, p.reference_chosen_logp,
                            p.reference_rejected_logp))
  out = {}
  for stage, items in rows.items():
    if items:
      out[stage] = (_packed(items, input_length, target_length) if pack else
                    _unpacked(items, input_length, target_length))
  if pack and out:  # One width of the per-pair arrays for every stage.
    width = max(f["pair_weights"].shape[1] for f in out.values())
    for features in out.values():
      for name in ("reference_chosen_logps", "reference_rejected_logps", "pair_weights"):
        features[name] = np.pad(features[name],
                                 ((0, 0), (0, width - features[name].shape[1])))
  return out, dict(dropped)


def _pad(seqs: Sequence[list[int]], length: int) -> np.ndarray:
  array = np.zeros((len(seqs), length), np.int32)
  for i, ids in enumerate(seqs):
    array[i, :len(ids)] = ids
  return array


def _unpacked(items: list[tuple], input_length: int, target_length: int
              ) -> dict[str, np.ndarray]:
  return {
      "encoder_input_tokens": _pad([r[0] for r in items], input_length),
      "chosen_target_tokens": _pad([r[1] for r in items], target_length),
      "rejected_target_tokens": _pad([r[2] for r in items], target_length),
      "reference_chosen_logps": np.array([r[3] for r in items], np.float32),
      "reference_rejected_logps": np.array([r[4] for r in items], np.float32)}


def _packed(items: list[tuple], input_length: int, target_length: int
            ) -> dict[str, np.ndarray]:
  examples = [{"inputs": np.asarray(r[0]), "chosen": np.asarray(r[1]),
               "rejected": np.asarray(r[2])} for r in items]
  packed, rows = packing.pack(examples, {"inputs": input_length, "chosen": target_length,
                                         "rejected": target_length})
  width = max(len(members) for members in rows)
  per_pair = {name: np.zeros((len(rows), width), np.float32)
              for name in ("reference_chosen_logps", "reference_rejected_logps",
                           "pair_weights")}
  for r, members in enumerate(rows):
    for slot, index in enumerate(members):
      per_pair["reference_chosen_logps"][r, slot] = items[index][3]
      per_pair["reference_rejected_logps"][r, slot] = items[index][4]
      per_pair["pair_weights"][r, slot] = 1.0
  return dict(per_pair, **{
      "encoder_input_tokens": packed["inputs"],
      "encoder_segment_ids": packed["inputs_segment_ids"],
      "encoder_positions": packed["inputs_positions"],
      **{f"{name}_{suffix}": packed[f"{name}{tail}"]
         for name in ("chosen", "rejected")
         for suffix, tail in (("target_tokens", ""), ("segment_ids", "_segment_ids"),
                              ("positions", "_positions"))}})


def prepare(pairs_path: paths.PathLike, data_dir: paths.PathLike,
            codec: Any, input_length: int, target_length: int,
            pack: bool = False) -> dict[str, Any]:
  """Writes the pairs' arrays per stage once; `counts` are rows (pairs when
  unpacked), `pairs` the pairs in them."""
  data_dir = paths.as_path(data_dir)
  manifest_path = data_dir / "manifest.json"
  source = {"pairs": paths.absolute_str(pairs_path),
            "size": paths.as_path(pairs_path).stat().length,
            "input_length": input_length, "target_length": target_length}
  if pack:  # Unpacked manifests keep their old key (and stay valid).
    source["packed"] = True
  if manifest_path.exists():
    manifest = paths.read_json(manifest_path)
    if manifest["source"] == source:
      return manifest
  if jax.process_index() == 0:
    pairs = schema.read_records(pairs_path, schema.PreferencePair)
    encoded, dropped = encode_pairs(pairs, codec, input_length, target_length, pack)
    counts, num_pairs = {}, {}
    for stage, features in encoded.items():
      num_pairs[stage] = int(features["pair_weights"].sum()) if pack else int(
          len(features["encoder_input_tokens"]))
      arrays.write_features(data_dir / stage, features,
                            {"packed": pack, "num_sequences": num_pairs[stage]})
      counts[stage] = int(len(features["encoder_input_tokens"]))
    manifest = {"source": source, "counts": counts, "pairs": num_pairs,
                "dropped": dropped}
    data_dir.mkdir(parents=True, exist_ok=True)
    paths.write_json(manifest_path, manifest)
  shards.sync_processes("dpo_data")
  return paths.read_json(manifest_path)
