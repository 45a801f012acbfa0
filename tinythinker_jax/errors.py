"""The one error type for bad input: the binaries print it and exit with status 2.

Raise `UserError` where a user can fix the problem (a missing file, a malformed
record, a gin binding that does not fit); its message names the file, line,
key or binding at fault. Any other exception is a bug and keeps its
traceback. `UserError` is a `ValueError`, so library callers that catch
`ValueError` keep working.
"""


class UserError(ValueError):
  """Bad input; the message says what to change, and where."""


class DataError(UserError):
  """A data or run file does not have the expected format; names file and line."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the run needs is absent (also a `FileNotFoundError`)."""


class UnknownNameError(UserError, KeyError):
  """A name (dataset, format, task) that is not registered (also a `KeyError`)."""

  def __str__(self) -> str:  # KeyError would quote the message.
    return str(self.args[0]) if self.args else ""
