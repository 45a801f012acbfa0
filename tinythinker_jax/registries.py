"""One registry style for everything looked up by name (seqio's register/get).

A `Registry` maps names to values in registration order: model families,
Hugging Face model types, weight sources, student formats, teachers,
baselines. `register(name, value)` adds one (twice is an error: a name means
one thing); `registry[name]` returns it or raises `UnknownName`
(`errors.UnknownNameError`), which says what kind of name it was and lists the
known ones. It is a `UserError` and a `KeyError`, so `registry.get(name, default)` and `name in
registry` behave as on a dict.

  FAMILIES = registries.Registry("model family")
  FAMILIES.register("decoder_only", DecoderOnlyModel)
  FAMILIES["decoder_only"]   # DecoderOnlyModel
  FAMILIES["rnn"]            # UnknownName: unknown model family 'rnn' (known: ...)
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, Mapping, TypeVar

from tinythinker_jax import errors

T = TypeVar("T")


# A name no registry entry has; the message lists the known names.
UnknownName = errors.UnknownNameError


class Registry(Mapping[str, T], Generic[T]):
  """Names -> values of one kind, in registration order."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str, value: T) -> T:
    if name in self._entries:
      raise errors.UserError(f"{self.kind} {name!r} is registered already")
    self._entries[name] = value
    return value

  def register_as(self, name: str) -> Callable[[T], T]:
    """`@registry.register_as(name)` over a class or function."""
    return lambda value: self.register(name, value)

  def __getitem__(self, name: str) -> T:
    try:
      return self._entries[name]
    except (KeyError, TypeError):
      raise UnknownName(f"unknown {self.kind} {name!r} (known: "
                        f"{', '.join(self._entries) or 'none'})") from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}: {list(self._entries)})"
