"""Gin at the edges: parse run configs for the binaries, t5x-style.

Library modules never import gin; gin files name library callables through
`from __gin__ import dynamic_registration`. Include paths are resolved against
the working directory, the project's `gin_configs/` folder, and any extra
search paths.
"""

from __future__ import annotations

import contextlib
import importlib.util  # noqa: F401  gin 0.5 needs it imported for relative includes.
import logging
import os
from typing import Optional, Sequence

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
GIN_CONFIGS_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "gin_configs")


class _DropSearchMisses(logging.Filter):
  """gin logs an error for every search path that lacks an included file."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


@contextlib.contextmanager
def _quiet_search():
  root = logging.getLogger()
  handler_filter = _DropSearchMisses()
  root.addFilter(handler_filter)
  try:
    yield
  finally:
    root.removeFilter(handler_filter)


class GinConfigError(ValueError):
  """A gin file or binding could not be parsed or names something unknown."""


def default_search_paths() -> list[str]:
  paths = [os.getcwd()]
  if os.path.isdir(GIN_CONFIGS_DIR):
    paths.append(GIN_CONFIGS_DIR)
  return paths


def rewrite_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `--gin.NAME=VALUE` flags out of argv as `NAME = VALUE` bindings.

  Returns `(remaining_argv, bindings)`. VALUE is a gin literal: strings need
  quotes (`--gin.MODEL_DIR="'/tmp/run'"`), as in t5x.
  """
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      bindings.append(f"{name} = {value}")
    elif arg.startswith("--gin."):
      raise GinConfigError(f"{arg}: expected --gin.NAME=VALUE")
    else:
      rest.append(arg)
  return rest, bindings


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (),
          search_paths: Optional[Sequence[str]] = None, *, finalize: bool = True) -> None:
  """Parses gin files and bindings; errors name the file, line or binding."""
  import gin  # pylint: disable=import-outside-toplevel
  for path in list(search_paths or []) + default_search_paths():
    gin.add_config_file_search_path(path)
  for file in gin_files:
    if not any(os.path.exists(os.path.join(p, file)) for p in
               [""] + list(search_paths or []) + default_search_paths()):
      raise GinConfigError(f"gin file {file!r} not found (searched the working "
                           f"directory and {GIN_CONFIGS_DIR})")
  try:
    with _quiet_search():
      gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                          finalize_config=finalize)
  except (ValueError, KeyError, SyntaxError, ImportError, TypeError) as e:
    raise GinConfigError(f"gin: {e}") from e


def query(name: str):
  """The value of a gin macro or binding, e.g. `query('MODEL_CONFIG')`."""
  import gin  # pylint: disable=import-outside-toplevel
  key = name if "." in name or name.startswith("%") else "%" + name
  try:
    return gin.query_parameter(key)
  except ValueError as e:
    raise GinConfigError(f"gin: {name} is not bound: {e}") from e


def resolve(value):
  """Calls a gin configurable reference (`@x()`) to get its value."""
  import gin  # pylint: disable=import-outside-toplevel
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else \
        value.scoped_configurable_fn
  return value


def write_operative_config(directory: str, filename: str = "config.gin") -> str:
  """Writes the operative gin config (secrets are never gin-bound) to `directory`."""
  import gin  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, filename)
  with open(path, "w") as f:
    f.write(gin.config_str())
  return path
