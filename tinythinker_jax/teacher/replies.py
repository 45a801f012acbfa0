"""Reading a teacher's TinyThinker reply: JSON from structured output, or text.

A reply yields the key information (the student's recall) and one verdict with
its explanation per option. Two ways in:

- **Structured output.** `rationale_schema(example)` is a JSON schema built for
  one question: `key_information`, plus `explanations`, exactly one
  `{option, verdict, explanation}` per option of that question, in order. An
  endpoint that supports it (OpenAI/vLLM `json_schema`, llama.cpp's
  `json_object` with a schema, vLLM's `guided_json`) constrains the reply to
  it; `parse_structured` reads it back.
- **Text.** `parse_text` reads the paper's format (`Key Information: ...`,
  `A is correct. Because ...`) and what real chat models write instead:
  markdown bold, bullets and numbered lists, `A.` / `(A)` / `A)` / `A:` /
  `Option A:` labels, options named by their text, key information over
  several lines, verdict words in any case ("Correct", "wrong", "not the best
  answer"), explanations that continue on the next line, and a closing "The
  correct answer is X" when an option line gives no verdict. What still
  cannot be read fails with a reason that quotes the offending line.

Either way, `render_text` writes the rationale back in the paper's text format,
which is what records show next to the raw reply.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional, Sequence

from tinythinker_jax import errors
from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning import answers
from tinythinker_jax.reasoning.formats import OptionVerdict, Parsed

# Bounds that keep a constrained small model from rambling inside one string
# until max_tokens cuts the object off (llama.cpp's grammar admits any length).
KEY_INFORMATION_MAX_CHARS = 240
EXPLANATION_MAX_CHARS = 240
SCHEMA_NAME = "tinythinker_rationale"

Rationale = tuple[str, dict[str, OptionVerdict]]


# ------------------------------------------------------------------ structured


# How the schema makes exactly one option correct without fixing which one:
# 'one_of': the explanations array is one of N alternatives, the k-th marking
#   option k `correct` and every other option `incorrect` (a grammar lets the
#   model choose at the first `correct` it writes; the rest are then forced);
# 'final_answer': the explanations carry no verdict, and a closing `answer`
#   field names the one correct option (the verdicts are rendered from it);
# 'none': every verdict free (two options may be marked correct).
ONE_CORRECT_FORMS = ("one_of", "final_answer", "none")


def _item(label: str, verdicts: Optional[Sequence[str]]) -> dict[str, Any]:
  properties: dict[str, Any] = {"option": {"type": "string", "enum": [label]}}
  if verdicts is not None:
    properties["verdict"] = {"type": "string", "enum": list(verdicts)}
  properties["explanation"] = {"type": "string", "minLength": 8,
                               "maxLength": EXPLANATION_MAX_CHARS}
  return {"type": "object", "properties": properties, "required": list(properties),
          "additionalProperties": False}


def _array(items: list[dict[str, Any]]) -> dict[str, Any]:
  return {"type": "array", "prefixItems": items, "items": False,
          "minItems": len(items), "maxItems": len(items)}


def check_one_correct(form: str) -> str:
  if form not in ONE_CORRECT_FORMS:
    raise errors.UserError(f"TinyThinkerSettings.one_correct={form!r}; expected one of "
                           f"{ONE_CORRECT_FORMS}")
  return form


def rationale_schema(example: Example, one_correct: str = "one_of") -> dict[str, Any]:
  """The JSON schema of one question's reply: every option exactly once, in
  order, and (unless `one_correct='none'`) exactly one of them correct."""
  labels = example.labels
  properties: dict[str, Any] = {"key_information": {
      "type": "string", "minLength": 8, "maxLength": KEY_INFORMATION_MAX_CHARS}}
  if check_one_correct(one_correct) == "one_of":
    properties["explanations"] = {"oneOf": [
        _array([_item(l, ["correct" if l == right else "incorrect"]) for l in labels])
        for right in labels]}
  elif one_correct == "final_answer":
    properties["explanations"] = _array([_item(l, None) for l in labels])
    properties["answer"] = {"type": "string", "enum": list(labels)}
  else:
    properties["explanations"] = _array([_item(l, ["correct", "incorrect"])
                                         for l in labels])
  return {"type": "object", "properties": properties, "required": list(properties),
          "additionalProperties": False}


def structured_token_budget(example: Example) -> int:
  """max_tokens that fits the largest reply the schema admits (~3 chars a token)."""
  per_option = EXPLANATION_MAX_CHARS + 60  # The item's keys and punctuation.
  return (KEY_INFORMATION_MAX_CHARS + 60 + per_option * len(example.labels)) // 3


def response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any]:
  """The request fields that ask an endpoint for JSON following `schema`.

  'json_schema': OpenAI's form (vLLM and llama.cpp's native server take it too);
  'json_object': llama-cpp-python's server, which rejects 'json_schema';
  'guided_json': vLLM's extra parameter.
  """
  if mode == "json_schema":
    return {"response_format": {"type": "json_schema", "json_schema": {
        "name": SCHEMA_NAME, "schema": schema, "strict": False}}}
  if mode == "json_object":
    return {"response_format": {"type": "json_object", "schema": schema}}
  if mode == "guided_json":
    return {"guided_json": schema}
  raise ValueError(f"structured output {mode!r}; expected 'json_schema', 'json_object' "
                   "or 'guided_json' (or 'none' for text)")


def _reason(explanation: str) -> str:
  """The analysis text: TinyThinker drops a leading 'Because' (here also
  'Since') and keeps
  'Although'/'While', which open their clause."""
  text = explanation.strip()
  match = re.match(r"(?i)(?:because|since)\b[\s,:]*", text)
  return text[match.end():].strip() if match else text


def parse_structured(text: str, example: Example) -> Parsed[Rationale]:
  """Reads a JSON reply made under `rationale_schema` (checked again here: an
  endpoint may ignore the schema)."""
  match = re.search(r"\{.*\}", text, re.S)  # Some servers wrap JSON in prose.
  try:
    # strict=False: a grammar's string rule may let raw newlines through.
    data = json.loads(match.group(0) if match else text, strict=False)
  except json.JSONDecodeError as e:
    return Parsed.fail(f"reply is not valid JSON ({e.msg} at char {e.pos}; cut off by "
                       f"max_tokens?): {text[-60:]!r}")
  if not isinstance(data, dict):
    return Parsed.fail(f"reply is JSON but not an object: {text[:60]!r}")
  key_info = " ".join(str(data.get("key_information") or "").split())
  if not key_info:
    return Parsed.fail("no key_information in the JSON reply")
  answer = data.get("answer")  # The 'final_answer' form: verdicts follow from it.
  if answer is not None:
    answer = str(answer).strip().strip("().").upper()
    if answer not in example.labels:
      return Parsed.fail(f"answer {answer!r} is not an option")
  verdicts: dict[str, OptionVerdict] = {}
  for item in data.get("explanations") or []:
    if not isinstance(item, dict):
      return Parsed.fail(f"an explanation is not an object: {str(item)[:60]!r}")
    label = str(item.get("option", "")).strip().strip("().").upper()
    verdict = str(item.get("verdict", "")).strip().lower()
    if not verdict and answer is not None:
      verdict = "correct" if label == answer else "incorrect"
    reason = _reason(" ".join(str(item.get("explanation", "")).split()))
    if label not in example.labels:
      return Parsed.fail(f"explanation for unknown option {label!r}")
    if verdict not in ("correct", "incorrect"):
      return Parsed.fail(f"option {label}: verdict {verdict!r} is not correct/incorrect")
    if not reason:
      return Parsed.fail(f"option {label}: empty explanation")
    if label in verdicts:
      return Parsed.fail(f"option {label} explained twice")
    verdicts[label] = OptionVerdict(label, verdict == "correct", reason)
  return _complete(key_info, verdicts, example.labels, text)


# ------------------------------------------------------------------------ text

_MARKUP = re.compile(r"\*\*|__|`")
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.)])\s+")
_HEADING = re.compile(r"^#+\s*")
_KEY_HEADER = re.compile(r"^(?:the\s+)?key\s+(?:information|info|points?|concepts?)\s*:\s*",
                         re.I)
_EXPLANATIONS_HEADER = re.compile(r"^(?:explanations?|analysis)\s*:\s*", re.I)
_ECHO = re.compile(r"^(?:options|choices|answer choices|question|q)\s*:", re.I)
_CHOICE_WORD = r"(?:\s+(?:answer|option|choice))?"
_NEGATIVE = re.compile(
    r"\b(?:incorrect|wrong|false|(?:not|isn'?t)\s+(?:the\s+|a\s+)?(?:correct|right|best|"
    rf"true|appropriate|suitable){_CHOICE_WORD})\b", re.I)
_POSITIVE = re.compile(rf"\b(?:correct|right|true|the\s+best{_CHOICE_WORD})\b", re.I)
_SUMMARY = re.compile(
    r"^(?:so,?\s+|therefore,?\s+|thus,?\s+|hence,?\s+|in\s+conclusion,?\s+)?(?:the\s+)?"
    r"(?:correct|right|best|final)?\s*(?:answer|option|choice)\s*(?:is|:)\s*(.*)$", re.I)


def _clean(line: str) -> str:
  line = _HEADING.sub("", _MARKUP.sub("", line)).strip()
  return _BULLET.sub("", line).strip()


def _option_start(line: str, example: Example) -> Optional[tuple[str, str]]:
  """(label, rest of line) when `line` opens an option's explanation."""
  labels = "|".join(map(re.escape, example.labels))
  match = re.match(rf"^(?:option|choice)\s*\(?({labels})\)?\s*[.):\-–—]?\s*(.*)$", line,
                   re.I)
  if match and match.group(1).upper() in example.labels:
    return match.group(1).upper(), match.group(2)
  match = re.match(rf"^\(({labels})\)\s*[.:\-–—]?\s*(.*)$", line)
  if match:
    return match.group(1), match.group(2)
  match = re.match(rf"^({labels})(?:\s*[.):\-–—]\s*|\s+(?=\S))(.*)$", line)
  if match:
    label, rest = match.groups()
    separated = line[len(label):len(label) + 1] in ".):-–—"
    # "A fox would..." opens a sentence, not option A.
    if separated or re.match(r"(?i)(?:is|was|would|seems|appears|because|can|could|"
                             r"does|doesn't|isn't|refers|describes|means|-)\b", rest):
      return label, rest
  lowered = line.lower()
  for choice in sorted(example.choices, key=lambda c: -len(c.text)):
    phrase = choice.text.strip().lower()
    if phrase and lowered.startswith(phrase) and (
        len(lowered) == len(phrase) or not lowered[len(phrase)].isalnum()):
      return choice.label, line[len(phrase):]
  return None


def _strip_option_text(rest: str, example: Example, label: str) -> str:
  """`race track - incorrect...` -> `- incorrect...` (the option's text echoed)."""
  phrase = example.choice_text(label).strip()
  if phrase and rest.lower().startswith(phrase.lower()):
    rest = rest[len(phrase):]
  return rest.lstrip(" \t").lstrip(":-–—,.").strip()


def _verdict(body: str) -> Optional[tuple[bool, int, int]]:
  """(correct?, start, end) of the first verdict phrase in an option's text."""
  found = [(m.start(), False, m.end()) for m in _NEGATIVE.finditer(body)]
  found += [(m.start(), True, m.end()) for m in _POSITIVE.finditer(body)]
  if not found:
    return None
  start, correct, end = min(found, key=lambda f: (f[0], f[1]))
  return correct, start, end


def _split_reason(body: str, span: Optional[tuple[int, int]]) -> str:
  """The explanation without its verdict: what follows `is correct.` when that
  is a sentence, else the whole text."""
  if span is not None:
    after = body[span[1]:].lstrip(" .:;,!-–—)").strip()
    before = body[:span[0]].strip()
    if len(after.split()) >= 3 and len(before.split()) <= 3:
      return _reason(after)
    if len((before + " " + after).split()) < 2:
      return ""  # A verdict with no explanation ("A. race track - incorrect.").
  return _reason(body)


@dataclasses.dataclass
class _Option:
  label: str
  line: str
  body: list[str]


def parse_text(text: str, example: Example) -> Parsed[Rationale]:
  """Reads the paper's text format and the common ways chat models deviate."""
  key_lines: list[str] = []
  options: list[_Option] = []
  summary_label: Optional[str] = None
  in_key = False
  for raw in text.splitlines():
    line = _clean(raw)
    if not line or set(line) <= set("#-=*_ ") or _ECHO.match(line):
      continue  # Blank, a rule, or the question / options repeated.
    key = _KEY_HEADER.match(line)
    if key:
      in_key = True
      line = line[key.end():].strip()
      if not line:
        continue
    header = _EXPLANATIONS_HEADER.match(line)
    if header and not _option_start(line, example):
      in_key = False
      line = line[header.end():].strip()
      if not line:
        continue
    summary = _SUMMARY.match(line)
    if summary and options:
      found = answers.label_candidates(summary.group(1), example.labels)
      if found:
        summary_label = found[0][1]
        continue
    start = _option_start(line, example)
    if start is not None:
      in_key = False
      options.append(_Option(start[0], raw.strip(), [start[1]]))
    elif options and not in_key:
      options[-1].body.append(line)  # The explanation goes on.
    else:
      key_lines.append(line)
  key_info = " ".join(key_lines).strip()
  if not key_info:
    return Parsed.fail("no key information"
                       + (f" before {options[0].line[:80]!r}" if options else ""))
  verdicts: dict[str, OptionVerdict] = {}
  for option in options:
    body = _strip_option_text(" ".join(option.body), example, option.label)
    found = _verdict(body)
    if found is None:
      if summary_label is None:
        return Parsed.fail(f"option {option.label} has no verdict: {option.line[:100]!r}")
      correct, span = option.label == summary_label, None
    else:
      correct, span = found[0], found[1:]
    reason = _split_reason(body, span)
    if not reason:
      return Parsed.fail(f"option {option.label} has no explanation: "
                         f"{option.line[:100]!r}")
    previous = verdicts.get(option.label)
    if previous is not None:
      if previous.correct != correct:
        return Parsed.fail(f"option {option.label} is called both correct and "
                           f"incorrect: {option.line[:100]!r}")
      continue  # A repeat (a closing recap) of the same verdict.
    verdicts[option.label] = OptionVerdict(option.label, correct, reason)
  return _complete(key_info, verdicts, example.labels, text)


def _complete(key_info: str, verdicts: dict[str, OptionVerdict], labels: Sequence[str],
              text: str) -> Parsed[Rationale]:
  missing = [l for l in labels if l not in verdicts]
  if missing:
    last = next((l.strip() for l in reversed(text.splitlines()) if l.strip()), "")
    return Parsed.fail(f"no explanation for option{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(missing)} (last line: {last[:80]!r})")
  return Parsed((key_info, {l: verdicts[l] for l in labels}))


def render_text(key_info: str, verdicts: dict[str, OptionVerdict]) -> str:
  """The rationale in the paper's format (`Key Information: ...\\nExplanations: ...`)."""
  lines = []
  for v in verdicts.values():
    reason = v.reason if re.match(r"(?:Although|While)\b", v.reason) else \
        f"Because {v.reason}"
    lines.append(f"{v.label} is {'correct' if v.correct else 'incorrect'}. {reason}")
  return f"Key Information: {key_info}\nExplanations: " + "\n".join(lines)


def parse_reply(text: str, example: Example, structured: bool) -> Parsed[Rationale]:
  """A structured reply is read as JSON, falling back to text (a server may
  ignore the schema); a text reply is read as text."""
  if not structured:
    return parse_text(text, example)
  parsed = parse_structured(text, example)
  if parsed.ok:
    return parsed
  as_text = parse_text(text, example)
  return as_text if as_text.ok else parsed
