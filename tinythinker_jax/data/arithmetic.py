"""Arithmetic expressions as math datasets and teachers write answers: SVAMP's
equations ("( 84.0 / 2.0 )") and a teacher's "The answer is (84 / 2)."."""

from __future__ import annotations

import ast
import operator
import re
from typing import Optional

_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv}
_EXPRESSION = re.compile(r"^[\d\s.+\-*/()]+$")


def arithmetic_value(expression: str) -> Optional[float]:
  """The value of an arithmetic expression of numbers, + - * / and brackets
  (SVAMP's equations, "( 84.0 / 2.0 )"; a teacher's "(84 / 2)"), or None when the
  text is not one (or divides by zero). Evaluated on its syntax tree, never eval."""
  text = expression.replace(",", "").strip()
  if not text or not _EXPRESSION.match(text):
    return None
  try:
    tree = ast.parse(text, mode="eval").body
  except SyntaxError:
    return None

  def value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
      return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      inner = value(node.operand)
      return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
      return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
    raise ValueError(ast.dump(node))

  try:
    return value(tree)
  except (ValueError, ZeroDivisionError):
    return None


def format_number(number: float) -> str:
  """A number as answers are written: an integer without '.0', else its repr."""
  return str(int(number)) if float(number).is_integer() else repr(float(number))
