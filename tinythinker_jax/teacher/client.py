"""An asynchronous client for any OpenAI-compatible endpoint (OpenAI, vLLM, TGI,
llama.cpp), built to survive real APIs.

- A bounded number of requests in flight, and an optional requests-per-minute
  limit.
- Retries with exponential backoff and full jitter on 429, 5xx, timeouts,
  dropped connections, truncated bodies and malformed JSON, honouring
  `Retry-After`.
- Request and token accounting.
- Samples go through the append-only `CompletionCache`: a finished request is
  never sent again. When a server ignores `n` (llama.cpp does), the client
  loops until it has every sample.
- The API key comes from an environment variable named in the config; it is
  sent in the Authorization header and never logged or written anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import enum
import json
import logging
import os
import random
import time
from typing import Any, Optional

import httpx

from tinythinker_jax import errors
from tinythinker_jax.teacher.cache import CompletionCache, request_key

log = logging.getLogger(__name__)


class Endpoint(enum.Enum):
  CHAT = "chat"  # /chat/completions with messages
  COMPLETIONS = "completions"  # /completions with a prompt


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """Where and how to reach the teacher. Holds the key's variable name, never the key."""

  base_url: str = "https://api.openai.com/v1"
  model: str = "gpt-4o"
  api_key_env: str = "OPENAI_API_KEY"
  endpoint: str = "chat"
  max_concurrency: int = 8
  requests_per_minute: Optional[float] = None
  max_retries: int = 8
  timeout_s: float = 120.0
  initial_backoff_s: float = 1.0
  max_backoff_s: float = 60.0
  max_n_per_request: int = 16
  seed: int = 0

  def __post_init__(self):
    Endpoint(self.endpoint)  # Raises ValueError naming a bad value.

  def describe(self) -> str:
    """For provenance: model and endpoint, without secrets."""
    return f"{self.model} @ {self.base_url} ({self.endpoint})"


@dataclasses.dataclass(frozen=True)
class Prompt:
  """The content of one request: chat messages or a completion prompt."""

  messages: tuple[tuple[str, str], ...] = ()
  text: str = ""
  temperature: float = 0.0
  max_tokens: int = 128
  top_p: float = 1.0
  stop: tuple[str, ...] = ()
  seed: Optional[int] = None  # Set for retries, so each retry is a new request.
  # More request fields as a JSON object, such as structured output's
  # `response_format` (kept as text so that a Prompt stays hashable).
  extra_json: str = ""

  def content(self, config: TeacherConfig) -> dict[str, Any]:
    body: dict[str, Any] = {"model": config.model, "temperature": self.temperature,
                            "max_tokens": self.max_tokens, "top_p": self.top_p}
    if self.stop:
      body["stop"] = list(self.stop)
    if self.seed is not None:
      body["seed"] = self.seed
    if self.extra_json:
      body.update(json.loads(self.extra_json))
    if Endpoint(config.endpoint) is Endpoint.CHAT:
      messages = list(self.messages) or [("user", self.text)]
      body["messages"] = [{"role": r, "content": c} for r, c in messages]
    else:
      if self.messages:
        raise errors.UserError("a completions endpoint takes a text prompt, not messages")
      body["prompt"] = self.text
    return body


@dataclasses.dataclass
class Usage:
  requests: int = 0
  retries: int = 0
  cached: int = 0
  failures: int = 0
  prompt_tokens: int = 0
  completion_tokens: int = 0
  started: float = dataclasses.field(default_factory=time.time)

  def tokens_per_second(self) -> float:
    return self.completion_tokens / max(time.time() - self.started, 1e-9)

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    record.pop("started")
    return record


class TeacherError(RuntimeError):
  """A request failed after all retries (or with an error that is not retried)."""


@dataclasses.dataclass(frozen=True)
class Sample:
  text: str
  finish_reason: Optional[str]
  sample_index: int
  cached: bool


class _RetryableError(Exception):

  def __init__(self, reason: str, retry_after: Optional[float] = None):
    super().__init__(reason)
    self.retry_after = retry_after


def _retry_after_seconds(value: Optional[str]) -> Optional[float]:
  if not value:
    return None
  try:
    return max(float(value), 0.0)
  except ValueError:
    try:
      when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
      return None
    return max(when.timestamp() - time.time(), 0.0)


class TeacherClient:
  """Sends prompts to the teacher; use as `async with TeacherClient(...) as client`."""

  def __init__(self, config: TeacherConfig, cache: CompletionCache,
               transport: Optional[httpx.AsyncBaseTransport] = None):
    self.config = config
    self.cache = cache
    self.usage = Usage()
    self._transport = transport
    self._semaphore = asyncio.Semaphore(config.max_concurrency)
    self._rng = random.Random(config.seed)
    self._rate_lock = asyncio.Lock()
    self._next_start = 0.0
    self._http: Optional[httpx.AsyncClient] = None

  async def __aenter__(self) -> "TeacherClient":
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(self.config.api_key_env, "")
    if key:
      headers["Authorization"] = f"Bearer {key}"
    self._http = httpx.AsyncClient(base_url=self.config.base_url.rstrip("/"),
                                   headers=headers, transport=self._transport,
                                   timeout=httpx.Timeout(self.config.timeout_s))
    return self

  async def __aexit__(self, *exc) -> None:
    if self._http is not None:
      await self._http.aclose()

  async def samples(self, prompt: Prompt, num_samples: int) -> list[Sample]:
    """`num_samples` completions of `prompt`, from the cache where already paid for."""
    content = prompt.content(self.config)
    keys = [request_key(content, i) for i in range(num_samples)]
    results: dict[int, Sample] = {}
    for i, key in enumerate(keys):
      record = self.cache.get(key)
      if record is not None:
        self.usage.cached += 1
        results[i] = Sample(record["response"]["text"],
                            record["response"].get("finish_reason"), i, True)
    missing = [i for i in range(num_samples) if i not in results]
    while missing:
      n = min(len(missing), self.config.max_n_per_request)
      choices, usage = await self._send(content, n)
      if not choices:
        raise TeacherError(f"{self.config.describe()}: a response had no choices")
      for choice, index in zip(choices, missing):
        response = {"text": choice["text"], "finish_reason": choice.get("finish_reason"),
                    "usage": usage}
        self.cache.put(keys[index], content, index, response)
        results[index] = Sample(choice["text"], choice.get("finish_reason"), index, False)
      missing = missing[len(choices):]  # A server that ignores `n` returns one.
    return [results[i] for i in range(num_samples)]

  async def _wait_for_rate_limit(self) -> None:
    if not self.config.requests_per_minute:
      return
    interval = 60.0 / self.config.requests_per_minute
    async with self._rate_lock:
      now = time.monotonic()
      wait = self._next_start - now
      self._next_start = max(now, self._next_start) + interval
    if wait > 0:
      await asyncio.sleep(wait)

  def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
    ceiling = min(self.config.max_backoff_s, self.config.initial_backoff_s * 2 ** attempt)
    delay = self._rng.uniform(0, ceiling)  # Full jitter.
    return max(delay, retry_after) if retry_after is not None else delay

  async def _send(self, content: dict[str, Any], n: int) -> tuple[list[dict], dict]:
    body = dict(content, n=n) if n > 1 else dict(content)
    path = "/chat/completions" if "messages" in content else "/completions"
    last_error = ""
    for attempt in range(self.config.max_retries + 1):
      await self._wait_for_rate_limit()
      try:
        async with self._semaphore:
          self.usage.requests += 1
          return self._parse(await self._post(path, body))
      except _RetryableError as e:
        last_error = str(e)
        if attempt == self.config.max_retries:
          break
        self.usage.retries += 1
        delay = self._backoff(attempt, e.retry_after)
        log.info("teacher request failed (%s); retry %d in %.1fs", e, attempt + 1, delay)
        await asyncio.sleep(delay)
    self.usage.failures += 1
    raise TeacherError(f"{self.config.describe()}: gave up after "
                       f"{self.config.max_retries + 1} attempts: {last_error}")

  async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
    assert self._http is not None, "use `async with TeacherClient(...)`"
    try:
      response = await self._http.post(path, json=body)
    except httpx.TimeoutException as e:
      raise _RetryableError(f"timeout ({type(e).__name__})") from e
    except (httpx.TransportError, httpx.DecodingError) as e:
      raise _RetryableError(f"connection error ({type(e).__name__}: {e})") from e
    if response.status_code == 429 or response.status_code >= 500:
      raise _RetryableError(f"HTTP {response.status_code}",
                            _retry_after_seconds(response.headers.get("retry-after")))
    if response.status_code >= 400:
      detail = response.text[:300]
      raise TeacherError(f"{self.config.describe()}: HTTP {response.status_code} on "
                         f"{path}: {detail}")
    try:
      return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise _RetryableError(f"malformed JSON in the response ({e})") from e

  def _parse(self, payload: dict[str, Any]) -> tuple[list[dict], dict]:
    try:
      choices = []
      for choice in payload["choices"]:
        text = (choice["message"]["content"] if "message" in choice else choice["text"])
        choices.append({"text": text or "", "finish_reason": choice.get("finish_reason")})
    except (KeyError, TypeError) as e:
      raise _RetryableError(f"response without choices/text ({e!r})") from e
    usage = payload.get("usage") or {}
    self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
    self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
    return choices, {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}

