"""Packing without TensorFlow: several examples per fixed-length row, as seqio packs.

`pack` reproduces `seqio.utils.trim_and_pack_dataset` (its TF-ops version,
the one `EncDecFeatureConverter(pack=True)` uses by default) row for row:
examples are trimmed to the feature lengths, taken in consecutive groups of
`max(feature_lengths)` examples, and within a group appended to the current
row while every feature still fits (next fit), so a row never spans two
groups. Each packed feature `k` gets `k_segment_ids` (1, 2, ... per example,
0 on padding) and `k_positions` (0, 1, ... within each example).

`pack_features` turns seqio's unpacked encoder-decoder features into its packed
ones (the feature names of `EncDecFeatureConverter(pack=True)`), with the
decoder inputs shifted within each segment, so that arrays materialised
without packing, or written by a host without TensorFlow, can be packed here
and give what seqio gives.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tinythinker_jax import errors

# EncDecFeatureConverter(pack=True)'s features beyond the unpacked ones.
PACKING_FEATURES = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids",
                    "decoder_positions")


def unpad(row: np.ndarray) -> np.ndarray:
  """The tokens before the padding (seqio keeps the first `count_nonzero` tokens)."""
  return row[:int(np.count_nonzero(row))]


def pack(examples: Sequence[Mapping[str, np.ndarray]], feature_lengths: Mapping[str, int]
         ) -> tuple[dict[str, np.ndarray], list[list[int]]]:
  """Packs 1-D token sequences per feature; returns the packed arrays
  (`[rows, length]` per feature, plus `_segment_ids` and `_positions`) and, per
  row, the indices of the examples it holds (segment `j` is `rows[r][j - 1]`)."""
  keys = list(feature_lengths)
  if not keys:
    raise errors.UserError("packing needs at least one feature length")
  group = max(feature_lengths.values())
  rows: list[list[int]] = []
  for start in range(0, len(examples), group):
    current: list[int] = []
    used = dict.fromkeys(keys, 0)
    for index in range(start, min(start + group, len(examples))):
      sizes = {k: min(len(unpad(np.asarray(examples[index][k]))), feature_lengths[k])
               for k in keys}
      if any(used[k] + sizes[k] > feature_lengths[k] for k in keys):
        rows.append(current)
        current, used = [], dict.fromkeys(keys, 0)
      current.append(index)
      for k in keys:
        used[k] += sizes[k]
    rows.append(current)
  out = {}
  for k in keys:
    length = feature_lengths[k]
    tokens = np.zeros((len(rows), length), np.int32)
    positions = np.zeros((len(rows), length), np.int32)
    for r, members in enumerate(rows):
      offset = 0
      for index in members:
        seq = unpad(np.asarray(examples[index][k]))[:length]
        tokens[r, offset:offset + len(seq)] = seq
        positions[r, offset:offset + len(seq)] = np.arange(len(seq))
        offset += len(seq)
    out[k] = tokens
    out[f"{k}_positions"] = positions
    # seqio's formula: a new segment wherever the position is 0, padding 0.
    out[f"{k}_segment_ids"] = (np.cumsum(positions == 0, axis=1) *
                               (tokens != 0)).astype(np.int32)
  return out, rows


def autoregressive_inputs(targets: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
  """Decoder inputs: targets shifted right within each segment, 0 first in each."""
  shifted = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  previous = np.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
  return np.where(segment_ids == previous, shifted, 0).astype(targets.dtype)


def pack_features(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """seqio's packed encoder-decoder features from its unpacked ones (same lengths)."""
  for name in ("encoder_input_tokens", "decoder_target_tokens"):
    if name not in features:
      raise errors.UserError(f"packing needs the feature {name!r}; have {sorted(features)}")
  enc, targets = features["encoder_input_tokens"], features["decoder_target_tokens"]
  examples = [{"inputs": e, "targets": t} for e, t in zip(enc, targets)]
  packed, _ = pack(examples, {"inputs": enc.shape[1], "targets": targets.shape[1]})
  return to_model_features(packed)


def to_model_features(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`EncDecFeatureConverter`'s names for packed `inputs`/`targets` features."""
  targets, segments = packed["targets"], packed["targets_segment_ids"]
  return {"encoder_input_tokens": packed["inputs"],
          "encoder_segment_ids": packed["inputs_segment_ids"],
          "encoder_positions": packed["inputs_positions"],
          "decoder_target_tokens": targets,
          "decoder_input_tokens": autoregressive_inputs(targets, segments),
          "decoder_loss_weights": (targets != 0).astype(np.int32),
          "decoder_segment_ids": segments,
          "decoder_positions": packed["targets_positions"]}
