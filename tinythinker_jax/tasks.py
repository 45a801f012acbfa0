"""seqio Tasks and Mixtures over rationale-record files.

Each task reads a JSONL of rationale records (what `tinythinker teach` writes)
and renders `inputs`/`targets` with `tinythinker_jax.reasoning.formats`, then
tokenizes with the configured vocabulary and appends EOS. Names:

    tinythinker.<dataset>.vanilla
    tinythinker.<dataset>.finetune_cot
    tinythinker.<dataset>.step_by_step              (predict: and explain: examples)
    tinythinker.<dataset>.<format>.<stage>          (format: tinythinker, recall_summarize,
                                                     analyze_summarize, summarize;
                                                     stage: recall, analyze, summarize)
    tinythinker.<dataset>.<format>                  (a Mixture of its stages, rates
                                                     1 : num_options : 1)

Files are found when a dataset is built, at
`$TINYTHINKER_RECORDS_DIR/<dataset>/<method>/<split>/records.jsonl` (the output
folder of `tinythinker teach` for that split; method:
`finetune_cot` for vanilla/Fine-tune-CoT/step-by-step, else `tinythinker`), and
the vocabulary is `$TINYTHINKER_VOCAB` when used (default: T5's
SentencePiece model).
`make_task` builds the same tasks for explicit files, unregistered.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, Iterator, Optional

from tinythinker_jax import errors, paths, tf_import

seqio, tf = tf_import.import_seqio()

# pylint: disable=wrong-import-position
from tinythinker_jax.data.datasets import DATASETS
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.reasoning import answers, formats

RECORDS_DIR_ENV = "TINYTHINKER_RECORDS_DIR"
VOCAB_ENV = "TINYTHINKER_VOCAB"
DEFAULT_VOCAB = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
STAGE_FORMATS = (formats.Format.TINYTHINKER, formats.Format.RECALL_SUMMARIZE,
                 formats.Format.ANALYZE_SUMMARIZE, formats.Format.SUMMARIZE_ONLY)


class EnvSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece vocabulary whose model file is `$TINYTHINKER_VOCAB` when it is
  used (T5's model when unset), so registering tasks at import fixes no path."""

  def __init__(self, extra_ids: int = 100):
    super().__init__(DEFAULT_VOCAB, extra_ids=extra_ids)

  @property
  def _sentencepiece_model_file(self) -> str:
    # seqio opens the file itself (through TF's gfile): hand it a local copy of
    # an object-store path, read through etils.epath as every run path is.
    return paths.local_copy(os.environ.get(VOCAB_ENV, DEFAULT_VOCAB))

  @_sentencepiece_model_file.setter
  def _sentencepiece_model_file(self, value: str) -> None:
    del value  # Always resolved from the environment.

  def _model_context(self):
    # seqio keeps the first model it loads; a process that materialises tasks for
    # two vocabularies (two runs in one process) must get the one set now.
    path = self._sentencepiece_model_file
    if getattr(self, "_loaded_from", None) != path:
      self._model = None
      self._loaded_from = path
    return super()._model_context()


def default_vocabulary() -> seqio.Vocabulary:
  return EnvSentencePieceVocabulary(extra_ids=100)


render_record = formats.render_record


def _records(path: str) -> Iterator[dict]:
  for line_no, line in enumerate(paths.as_path(path).read_text().split("\n"), 1):
    if line.strip():
      try:
        yield json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.UserError(f"{path}:{line_no}: invalid JSON: {e}") from e


def _source(path_fn: Callable[[str], str], fmt: formats.Format,
            stage: Optional[formats.Stage]) -> seqio.DataSource:
  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
    del shuffle_files, seed
    path = path_fn(split)
    if not paths.as_path(path).exists():
      raise errors.MissingFileError(f"{path}: no rationale records for split {split!r} "
                              f"(set ${RECORDS_DIR_ENV} or run `tinythinker teach`)")
    rendered = [e for r in _records(path) for e in render_record(r, fmt, stage)]
    keys = ("inputs", "targets", "answer", "id")
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant([e[k] for e in rendered], tf.string) for k in keys})
  return seqio.FunctionDataSource(dataset_fn, splits=("train", "validation", "test"))


def _postprocess(answer_type: AnswerType, fmt: formats.Format):
  def postprocess(output, example=None, is_target=False):
    text = output.decode("utf-8") if isinstance(output, bytes) else str(output)
    if is_target:
      gold = example["answer"] if example is not None else text
      return gold.decode("utf-8") if isinstance(gold, bytes) else gold
    if fmt in STAGE_FORMATS:
      return answers.extract_tinythinker_answer(text)
    # Fine-tune-CoT's evaluator: the first candidate after `-->` (the last one
    # when it is missing); a vanilla output has no prefix: its first candidate.
    prefix = None if fmt is formats.Format.VANILLA else answers.ANSWER_ARROW
    return answers.extract_answer(text, answer_type, prefix=prefix)
  return postprocess


def _accuracy(answer_type: AnswerType, fmt: formats.Format):
  def metric(targets, predictions):
    if fmt in STAGE_FORMATS:
      correct = [p == t for t, p in zip(targets, predictions)]
    else:
      correct = [answers.answers_match(p, t, answer_type)
                 for t, p in zip(targets, predictions)]
    return {"accuracy": 100.0 * sum(correct) / max(len(correct), 1)}
  return metric


def make_task(name: str, path_fn: Callable[[str], str], fmt: formats.Format,
              stage: Optional[formats.Stage] = None,
              answer_type: AnswerType = AnswerType.LETTER,
              vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
  """An (unregistered) seqio Task over records at `path_fn(split)`."""
  vocabulary = vocabulary or default_vocabulary()
  output_features = {"inputs": seqio.Feature(vocabulary, add_eos=True),
                     "targets": seqio.Feature(vocabulary, add_eos=True)}
  answer_task = fmt not in STAGE_FORMATS or stage is formats.Stage.SUMMARIZE
  return seqio.Task(
      name, source=_source(path_fn, fmt, stage),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=output_features,
      postprocess_fn=_postprocess(answer_type, fmt) if answer_task else None,
      metric_fns=[_accuracy(answer_type, fmt)] if answer_task else [])


def _records_path(dataset: str, method: str, split: str) -> str:
  root = os.environ.get(RECORDS_DIR_ENV, "rationales")
  return str(paths.as_path(root) / dataset.replace("/", "_") / method / split /
             "records.jsonl")


def task_names(dataset: str) -> list[str]:
  base = f"tinythinker.{dataset.replace('/', '_')}"
  names = [f"{base}.{f.value}" for f in (formats.Format.VANILLA, formats.Format.FINETUNE_COT,
                                         formats.Format.STEP_BY_STEP)]
  for fmt in STAGE_FORMATS:
    names += [f"{base}.{fmt.value}.{s.value}" for s in formats.STAGES_OF[fmt]]
  return names


def register_all() -> None:
  """Registers every dataset x format task and the stage mixtures (idempotent)."""
  for dataset, spec in DATASETS.items():
    base = f"tinythinker.{dataset.replace('/', '_')}"
    for fmt in (formats.Format.VANILLA, formats.Format.FINETUNE_COT,
                formats.Format.STEP_BY_STEP):
      name = f"{base}.{fmt.value}"
      if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add_provider(name, make_task(
            name, functools.partial(_records_path, dataset, "finetune_cot"), fmt,
            answer_type=spec.answer_type))
    for fmt in STAGE_FORMATS:
      stage_names = []
      for stage in formats.STAGES_OF[fmt]:
        name = f"{base}.{fmt.value}.{stage.value}"
        stage_names.append(name)
        if name not in seqio.TaskRegistry.names():
          seqio.TaskRegistry.add_provider(name, make_task(
              name, functools.partial(_records_path, dataset, "tinythinker"), fmt, stage,
              answer_type=spec.answer_type))
      mixture = f"{base}.{fmt.value}"
      if mixture not in seqio.MixtureRegistry.names():
        # TinyThinker's proportions (its interleaving: an analyze step per
        # option for each recall and summarize step) as the mixture's rates.
        seqio.MixtureRegistry.add(mixture, [
            (n, float(spec.num_options or 1) if n.endswith(".analyze") else 1.0)
            for n in stage_names])
