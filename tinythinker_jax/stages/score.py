"""The log-likelihood of given targets under a student (`tinythinker score`)."""

from __future__ import annotations

from typing import Any, Sequence

from tinythinker_jax import student as student_lib


def run_score(*, model_dir: str, inputs: Sequence[str], targets: Sequence[str],
              vocabulary: str = "", model_config: Any = None,
              student: student_lib.StudentSettings = student_lib.StudentSettings()
              ) -> list[dict[str, Any]]:
  """Per target: its summed log-probability (EOS included), length and token log-probs."""
  model = student_lib.build(model_dir, vocabulary=vocabulary, model_config=model_config,
                            settings=student)
  return model.score(inputs, targets)
