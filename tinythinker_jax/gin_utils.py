"""Gin at the edges: parse run configs for the binaries, t5x-style.

Library modules never import gin; gin files name library callables through
`from __gin__ import dynamic_registration`. Include paths are resolved against
the working directory, the project's `gin_configs/` (the repository's top-level
folder, installed as package data, so a wheel finds `runs/sft.gin` too), and
any extra search paths.

The binaries share the helpers at the end: `add_gin_flags`, `parse_flags` and
`run`, which turns `errors.UserError` into one line on stderr and exit code 2
and lets every other exception keep its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util  # noqa: F401  gin 0.5 needs it imported for relative includes.
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from tinythinker_jax import errors, preemption

def _gin_configs_dir() -> str:
  """The repository's top-level `gin_configs/` in a checkout, else the installed
  copy (package data of `tinythinker_jax.gin_configs`, which setup.py maps it to)."""
  checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "gin_configs")
  if os.path.isdir(os.path.join(checkout, "runs")):
    return checkout
  spec = importlib.util.find_spec("tinythinker_jax.gin_configs")
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  return checkout


GIN_CONFIGS_DIR = _gin_configs_dir()


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


class GinConfigError(errors.UserError):
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


def _guard_system_path_reader() -> None:
  """gin also looks for `a/b.gin` as file `b.gin` of a Python package `a`; a
  folder `a/` in the working directory (say `runs/`, where run folders go) is a
  namespace package without a file, and gin's check raises TypeError instead of
  answering no. Wrap the check so that such a folder reads as no package."""
  from gin import config, resource_reader  # pylint: disable=import-outside-toplevel

  def exists(path: str) -> bool:
    try:
      return resource_reader.system_path_file_exists(path)
    except TypeError:
      return False
  # pylint: disable=protected-access
  config._FILE_READERS[:] = [
      (reader, exists if check is resource_reader.system_path_file_exists else check)
      for reader, check in config._FILE_READERS]


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (),
          search_paths: Optional[Sequence[str]] = None, *, finalize: bool = True) -> None:
  """Parses gin files and bindings; errors name the file, line or binding."""
  import gin  # pylint: disable=import-outside-toplevel
  _guard_system_path_reader()
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
    # gin appends the whole operative config to some errors; the binding is named
    # before it.
    message = str(e).split(" in config string:")[0]
    hint = _misspelt_required(message)
    raise GinConfigError(f"gin: {message.rstrip('.') + hint if hint else message}") from e


# Macros the binaries read themselves (`query`), beside those gin values refer to.
QUERIED_MACROS = ("MODEL_DIR", "OUTPUT_DIR", "RUN_DIR", "ACTIVATION_DTYPE",
                  "COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID", "REQUIRED_PLATFORM",
                  "TRAIN_RUN")


def _references(value, out: set[str]) -> None:
  import gin  # pylint: disable=import-outside-toplevel
  if isinstance(value, gin.config.ConfigurableReference):
    out.add(value.scoped_selector)
  elif isinstance(value, dict):
    for item in value.values():
      _references(item, out)
  elif isinstance(value, (list, tuple, set)):
    for item in value:
      _references(item, out)


def unused_macros() -> dict[str, Optional[str]]:
  """Macros bound in the parsed config that no binding refers to and no binary
  reads, each with the nearest macro name that is used (or None): a misspelt
  `--gin.MODLE_DIR=...` is otherwise accepted without a word."""
  import difflib  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  config = gin.config._CONFIG  # pylint: disable=protected-access
  bound = {selector for selector, name in config if name == "gin.macro"}
  referenced: set[str] = set()
  for params in config.values():
    for value in params.values():
      _references(value, referenced)
  used = {r.split("/")[0] for r in referenced if r.endswith("/gin.macro")}
  used |= set(QUERIED_MACROS)
  return {name: next(iter(difflib.get_close_matches(name, sorted(used), n=1, cutoff=0.6)),
                     None)
          for name in sorted(bound - used)}


def warn_unused_macros() -> list[str]:
  """Prints (to stderr) and returns a warning for each unused macro."""
  warnings = []
  for name, nearest in unused_macros().items():
    hint = f"; did you mean {nearest}?" if nearest else ""
    warnings.append(f"warning: gin macro {name} is bound but nothing uses it{hint}")
  for warning in warnings:
    print(warning, file=sys.stderr)
  return warnings


def _misspelt_required(message: str) -> str:
  """For gin's "X set to %gin.REQUIRED but not subsequently overridden": the
  bound but unused macro whose name is nearest to X (a misspelling), if any."""
  import re  # pylint: disable=import-outside-toplevel
  match = re.match(r"(\w+)/macro\.value set to `%gin.REQUIRED`", message)
  if not match:
    return ""
  import difflib  # pylint: disable=import-outside-toplevel
  unused = [name for name in unused_macros() if name != match.group(1)]
  close = difflib.get_close_matches(match.group(1), unused, n=1, cutoff=0.6)
  return f" ({close[0]} is bound but nothing uses it: did you mean {match.group(1)}?)" \
      if close else ""


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


def write_operative_config(directory, filename: str = "config.gin") -> str:
  """Writes the operative gin config (secrets are never gin-bound) to `directory`
  (a local folder or an object store: `paths`)."""
  import gin  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import paths  # pylint: disable=import-outside-toplevel
  path = paths.as_path(directory) / filename
  path.parent.mkdir(parents=True, exist_ok=True)
  paths.write_text(path, gin.config_str())
  return str(path)


def query_or(name: str, default=None):
  """`query(name)`, or `default` when the macro is not bound."""
  try:
    return query(name)
  except GinConfigError:
    return default


# ------------------------------------------------------------------ binaries


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """t5x's gin flags: --gin_file (repeatable), --gin_bindings, --gin_search_paths."""
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin config file (repeatable); resolved against the working "
                      "directory and the project's gin_configs/")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding such as \"MODEL_DIR='/tmp/run'\" (repeatable); "
                      "--gin.NAME=VALUE works too")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="extra folders to resolve gin includes in")


def parse_flags(args: argparse.Namespace, bindings: Sequence[str] = (),
                default_gin_file: Optional[str] = None, *, devices: bool = True) -> None:
  """Parses the binary's gin files (or its default run config) and bindings.

  A binary that runs on devices (`devices=True`, all but teach, vocab and
  data) then joins the cluster when `COORDINATOR_ADDRESS` is bound (before
  anything touches a device; 'auto': JAX finds the cluster), logs the platform
  once and checks `REQUIRED_PLATFORM` (`platforms.start`).
  """
  gin_files = list(args.gin_file) or ([default_gin_file] if default_gin_file else [])
  all_bindings = list(args.gin_bindings) + list(bindings)
  if gin_files or all_bindings:
    parse(gin_files, all_bindings, args.gin_search_paths)
    warn_unused_macros()
  if devices:
    from tinythinker_jax import partitioning, platforms  # pylint: disable=import-outside-toplevel
    coordinator = query_or("COORDINATOR_ADDRESS")
    if coordinator:
      partitioning.initialize_distributed(None if coordinator == "auto" else coordinator,
                                          query_or("NUM_PROCESSES"),
                                          query_or("PROCESS_ID"))
    platforms.start(query_or("REQUIRED_PLATFORM"), query_or("ACTIVATION_DTYPE"),
                    prog=getattr(args, "_prog", None) or "tinythinker")


def run(prog: str, build_parser: Callable[[argparse.ArgumentParser], None],
        handler: Callable[[argparse.Namespace, list[str]], int],
        argv: Optional[Sequence[str]] = None, description: str = "") -> int:
  """A binary's `main`: flags (gin ones included), then `handler(args, bindings)`.

  `errors.UserError` (bad input: a file, line, key or binding) is printed as
  one line with exit code 2; a loop stopped by SIGTERM after saving
  (`preemption.Preempted`) with 143; anything else propagates with its
  traceback.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog=prog, description=description)
  add_gin_flags(parser)
  build_parser(parser)
  try:
    argv, bindings = rewrite_gin_args(argv)
    args = parser.parse_args(argv)
    args._prog = prog  # pylint: disable=protected-access
    return handler(args, bindings)
  except errors.UserError as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return 2
  except preemption.Preempted as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return preemption.EXIT_CODE


def configured_binary(fn: Callable, default_gin_file: str, output_macro: str
                      ) -> Callable[[argparse.Namespace, list[str]], int]:
  """A binary's handler that calls one gin-configured library function.

  It parses the gin flags (default: `default_gin_file`), writes the operative
  config to the folder `output_macro` names, calls `fn` with its gin bindings
  and prints the result (as JSON unless it is a string).
  """
  def handler(args: argparse.Namespace, bindings: Sequence[str]) -> int:
    import json  # pylint: disable=import-outside-toplevel
    import gin  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    parse_flags(args, bindings, default_gin_file)
    output_dir = query(output_macro)
    if jax.process_index() == 0:
      write_operative_config(output_dir)
    result = gin.get_configurable(fn)()
    if jax.process_index() == 0:
      print(result if isinstance(result, str) else json.dumps(result, indent=2))
    return 0
  return handler


def run_as_module(spec) -> None:
  """`python -m tinythinker_jax.cli.VERB`: runs the package's own copy of the module.

  Run as `__main__`, a binary's functions are not the ones its gin files name
  (gin registers `tinythinker_jax.cli.VERB.fn`), so the binary re-enters
  through the imported module.
  """
  sys.exit(importlib.import_module(spec.name).main())
