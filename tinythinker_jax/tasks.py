"""seqio Tasks and Mixtures over rationale-record files.

Each task reads a JSONL of rationale records (what `tinythinker teach` writes)
and renders `inputs`/`targets` with `tinythinker_jax.reasoning.formats`, then
tokenizes with the configured vocabulary and appends EOS. Names:

    tinythinker.<dataset>.vanilla
    tinythinker.<dataset>.finetune_cot
    tinythinker.<dataset>.step_by_step.<task>       (task: predict, explain; the
                                                     format's name is their mixture)
    tinythinker.<dataset>.<format>.<stage>          (format: tinythinker, recall_summarize,
                                                     analyze_summarize, summarize;
                                                     stage: recall, analyze, summarize)
    tinythinker.<dataset>.<format>                  (a Mixture of its stages, rates
                                                     1 : num_options : 1)

The names, records paths and stage rates come from the format registry
(`reasoning.registry`).

The library never registers or reads the environment: `resolve(name,
records_dir=..., vocabulary=...)` builds a name's tasks (unregistered) bound to
a run's records and vocabulary, which `stages.materialize` writes as arrays.
`register_all()` registers every name for t5x users (`import tasks`); those
registered tasks find their files when a dataset is built, at
`$TINYTHINKER_RECORDS_DIR/<dataset>/<method>/<split>/records.jsonl`, and their
vocabulary at `$TINYTHINKER_VOCAB` (default: T5's SentencePiece model), as a
t5x gin file cannot pass paths to a registered task.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

from tinythinker_jax import errors, paths, tf_import
from tinythinker_jax.tokenizers import vocabularies

seqio, tf = tf_import.import_seqio()

# pylint: disable=wrong-import-position
from tinythinker_jax.data.datasets import DATASETS
from tinythinker_jax.data import schema
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.reasoning import answers, formats, registry

RECORDS_DIR_ENV = "TINYTHINKER_RECORDS_DIR"
VOCAB_ENV = "TINYTHINKER_VOCAB"
DEFAULT_VOCAB = vocabularies.T5_VOCABULARY
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


def _source(path_fn: Callable[[str], str], fmt: formats.Format,
            stage: Optional[formats.Stage]) -> seqio.DataSource:
  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
    del shuffle_files, seed
    path = path_fn(split)
    if not paths.as_path(path).exists():
      raise errors.MissingFileError(f"{path}: no rationale records for split {split!r} "
                              f"(set ${RECORDS_DIR_ENV} or run `tinythinker teach`)")
    rendered = [e for r in schema.read_records(path, schema.RationaleRecord) for e in render_record(r, fmt, stage)]
    keys = ("inputs", "targets", "answer", "id")
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant([e[k] for e in rendered], tf.string) for k in keys})
  return seqio.FunctionDataSource(dataset_fn, splits=("train", "validation", "test"))


def _postprocess(answer_type: AnswerType, fmt: formats.Format,
                 stage: Optional[formats.Stage] = None):
  def postprocess(output, example=None, is_target=False):
    text = output.decode("utf-8") if isinstance(output, bytes) else str(output)
    if is_target:
      gold = example["answer"] if example is not None else text
      return gold.decode("utf-8") if isinstance(gold, bytes) else gold
    if fmt in STAGE_FORMATS:
      return answers.extract_tinythinker_answer(text)
    # Fine-tune-CoT's evaluator: the first candidate after `-->` (the last one
    # when it is missing); a vanilla output has no prefix: its first candidate.
    prefix = (None if fmt is formats.Format.VANILLA or stage is formats.Stage.PREDICT
              else answers.ANSWER_ARROW)
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
  answer_task = ((fmt not in STAGE_FORMATS and stage is not formats.Stage.EXPLAIN)
                 or stage is formats.Stage.SUMMARIZE)
  return seqio.Task(
      name, source=_source(path_fn, fmt, stage),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=output_features,
      postprocess_fn=_postprocess(answer_type, fmt, stage) if answer_task else None,
      metric_fns=[_accuracy(answer_type, fmt)] if answer_task else [])


def _env_records_path(dataset: str, method: str, split: str) -> str:
  """A registered task's records file (t5x users: `$TINYTHINKER_RECORDS_DIR`)."""
  spec = next(f for f in registry.FORMATS.values() if f.method == method)
  return spec.records_path(os.environ.get(RECORDS_DIR_ENV, "rationales"), dataset, split)


def _tasks_of(dataset: str, spec: registry.FormatSpec,
              path_fn: Callable[[str], str], answer_type: AnswerType,
              vocabulary: Optional[seqio.Vocabulary]) -> dict[str, seqio.Task]:
  if not spec.staged:
    name = spec.task_name(dataset)
    return {name: make_task(name, path_fn, spec.format, answer_type=answer_type,
                            vocabulary=vocabulary)}
  return {spec.task_name(dataset, stage): make_task(
      spec.task_name(dataset, stage), path_fn, spec.format, stage,
      answer_type=answer_type, vocabulary=vocabulary) for stage in spec.stages}


def resolve(name: str, *, records_dir: str, vocabulary: str
            ) -> Optional[dict[str, tuple[seqio.Task, float]]]:
  """The tasks of a `tinythinker.<dataset>.<format>[.<stage>]` name with their
  mixing rates, unregistered, reading `records_dir`'s records and tokenizing
  with `vocabulary` (a SentencePiece model path or 'byte'; '' for T5's); None
  for a name of another form (a seqio task registered elsewhere)."""
  parsed = registry.parse_task_name(name)
  if parsed is None:
    return None
  dataset = next((d for d in DATASETS if registry.dataset_key(d) == parsed.dataset_key),
                 None)
  if dataset is None:
    return None
  spec, stage = parsed.spec, parsed.stage
  vocab = vocabularies.get_vocabulary(vocabulary or DEFAULT_VOCAB)
  num_options = DATASETS[dataset].num_options or 1
  path_fn = functools.partial(spec.records_path, records_dir, dataset)
  tasks = _tasks_of(dataset, spec, path_fn, DATASETS[dataset].answer_type, vocab)
  if stage is not None:
    return {spec.task_name(dataset, stage): (tasks[spec.task_name(dataset, stage)], 1.0)}
  if not spec.staged:
    return {n: (t, 1.0) for n, t in tasks.items()}
  rates = spec.mixture_rates(num_options)
  return {spec.task_name(dataset, s): (tasks[spec.task_name(dataset, s)], rates[s])
          for s in spec.stages}


def task_names(dataset: str) -> list[str]:
  return [n for spec in registry.FORMATS.values() for n in spec.task_names(dataset)]


def register_all() -> None:
  """Registers every dataset x format task and the stage mixtures (idempotent),
  reading their files from the environment (see the module docstring)."""
  for dataset, ds_spec in DATASETS.items():
    for spec in registry.FORMATS.values():
      path_fn = functools.partial(_env_records_path, dataset, spec.method)
      for name, task in _tasks_of(dataset, spec, path_fn, ds_spec.answer_type,
                                  None).items():
        if name not in seqio.TaskRegistry.names():
          seqio.TaskRegistry.add_provider(name, task)
      mixture = spec.task_name(dataset)
      if spec.staged and mixture not in seqio.MixtureRegistry.names():
        # TinyThinker's proportions (its interleaving: an analyze step per
        # option for each recall and summarize step) as the mixture's rates.
        rates = spec.mixture_rates(ds_spec.num_options or 1)
        seqio.MixtureRegistry.add(mixture, [(spec.task_name(dataset, s), rates[s])
                                            for s in spec.stages])
