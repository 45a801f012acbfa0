"""An asynchronous client for any OpenAI-compatible endpoint (OpenAI, vLLM, TGI,
llama.cpp), built to survive real APIs.

- A bounded number of requests in flight, and an optional requests-per-minute
  limit; with several replicas of one model (`base_urls`), each request goes to
  the replica with the fewest requests in flight.
- `seed_each_sample`: each sample is its own request with a seed derived from
  the run's seed and the sample's cache key, so that a sample's text does not
  depend on the order, the concurrency or the replica that served it (for
  servers that ignore `n` and sample from one running state, as llama.cpp's).
- Retries with exponential backoff and full jitter on 429, 5xx, timeouts, dropped
  connections, truncated bodies and malformed JSON, honouring `Retry-After`.
- Request and token accounting; with `top_logprobs`, each token's log-probs.
- Samples go through the append-only `CompletionCache`: a finished request is
  never sent again. When a server ignores `n` (llama.cpp does), the client
  loops until it has every sample.
- Deferred mode (`defer_to`): a request that is not cached is recorded there
  and `Deferred` is raised instead of sending it. The Batch API teacher
  (`teacher.batch`) and `tinythinker teach --dry_run` collect requests so.
- The API key comes from an environment variable named in the config; it is
  sent in the Authorization header and never logged or written anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import enum
import hashlib
import json
import logging
import os
import random
import time
from typing import Any, Optional

import httpx

from tinythinker_jax import errors
from tinythinker_jax.teacher.cache import CompletionCache, request_key
from tinythinker_jax.teacher.logprobs import token_logprobs

log = logging.getLogger(__name__)


MAX_TOP_LOGPROBS = 20


class Endpoint(enum.Enum):
  CHAT = "chat"  # /chat/completions with messages
  COMPLETIONS = "completions"  # /completions with a prompt


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """Where and how to reach the teacher. Holds the key's variable name, never the key."""

  base_url: str = "https://api.openai.com/v1"
  # Several replicas of the same model (servers on other ports or hosts); when
  # given, they are used instead of `base_url`.
  base_urls: tuple[str, ...] = ()
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
  seed_each_sample: bool = False
  # OpenAI's Batch API (and servers with the same /files + /batches protocol):
  # requests are collected, submitted as one batch per round, polled every
  # `batch_poll_s`, and the answers land in the completion cache (teacher.batch).
  batch: bool = False
  batch_poll_s: float = 30.0
  batch_completion_window: str = "24h"
  batch_max_attempts: int = 3  # Batches that may fail one request before it is an error.
  batch_max_requests: int = 50_000  # OpenAI's cap on one batch's requests.
  # Prices in dollars per million tokens, for `tinythinker teach --dry_run`'s estimate.
  prompt_price_per_million: Optional[float] = None
  completion_price_per_million: Optional[float] = None
  # > 0: each generated token's log-prob and its `top_logprobs` most likely tokens' are
  # asked for (part of the request and its cache key) and cached with the completion,
  # for offline top-k distillation (`teacher.logprobs`).
  top_logprobs: int = 0

  def __post_init__(self):
    Endpoint(self.endpoint)  # Raises ValueError naming a bad value.
    if not 0 <= int(self.top_logprobs) <= MAX_TOP_LOGPROBS:
      raise errors.UserError(f"TeacherConfig.top_logprobs={self.top_logprobs}: must be in "
                             f"[0, {MAX_TOP_LOGPROBS}] (OpenAI's limit)")
    if isinstance(self.base_urls, str):
      object.__setattr__(self, "base_urls", (self.base_urls,))

  @property
  def urls(self) -> tuple[str, ...]:
    return tuple(self.base_urls) or (self.base_url,)

  def describe(self) -> str:
    """For provenance: model and endpoint, without secrets (replicas counted,
    not named: their ports change from run to run)."""
    where = self.urls[0] if len(self.urls) == 1 else f"{len(self.urls)} replicas"
    return f"{self.model} @ {where} ({self.endpoint})"

  def sample_seed(self, key: str) -> int:
    """The seed of the sample cached under `key` (31 bits)."""
    digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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
    chat = Endpoint(config.endpoint) is Endpoint.CHAT
    if config.top_logprobs:  # The completions endpoint's form: `logprobs: k`.
      body.update({"logprobs": True, "top_logprobs": int(config.top_logprobs)} if chat
                  else {"logprobs": int(config.top_logprobs)})
    if chat:
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


class Deferred(Exception):
  """Requests were recorded in the client's `defer_to` instead of being sent."""


@dataclasses.dataclass(frozen=True)
class PendingRequest:
  """A request recorded in deferred mode: its cache key, the sample index, the
  content it is cached under, and the body to send (n=1, with its seed)."""

  key: str
  sample_index: int
  content: dict[str, Any]
  body: dict[str, Any]

  @property
  def path(self) -> str:
    return "/chat/completions" if "messages" in self.body else "/completions"


@dataclasses.dataclass(frozen=True)
class Sample:
  text: str
  finish_reason: Optional[str]
  sample_index: int
  cached: bool
  # Each generated token's `{"token", "logprob", "top": [[token, logprob], ...]}`
  # when the request asked for log-probs (`TeacherConfig.top_logprobs`).
  logprobs: Optional[list] = None


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


def auth_headers(config: TeacherConfig) -> dict[str, str]:
  """JSON content type, and the key from the environment where one is set."""
  headers = {"Content-Type": "application/json"}
  key = os.environ.get(config.api_key_env, "")
  if key:
    headers["Authorization"] = f"Bearer {key}"
  return headers


def parse_completion(payload: dict[str, Any]) -> tuple[list[dict], dict]:
  """A completion's choices as `{text, finish_reason[, logprobs]}` (see
  `logprobs.token_logprobs`) and its token usage."""
  choices = []
  for choice in payload["choices"]:
    text = (choice["message"]["content"] if "message" in choice else choice["text"])
    parsed = {"text": text or "", "finish_reason": choice.get("finish_reason")}
    logprobs = token_logprobs(choice)
    if logprobs is not None:
      parsed["logprobs"] = logprobs
    choices.append(parsed)
  usage = payload.get("usage") or {}
  return choices, {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}


class TeacherClient:
  """Sends prompts to the teacher; use as `async with TeacherClient(...) as client`."""

  def __init__(self, config: TeacherConfig, cache: CompletionCache,
               transport: Optional[httpx.AsyncBaseTransport] = None,
               defer_to: Optional[dict[str, PendingRequest]] = None):
    self.config = config
    self.defer_to = defer_to
    self.cache = cache
    self.usage = Usage()
    self._transport = transport
    self._semaphore = asyncio.Semaphore(config.max_concurrency)
    self._rng = random.Random(config.seed)
    self._rate_lock = asyncio.Lock()
    self._next_start = 0.0
    self._http: list[httpx.AsyncClient] = []
    self._in_flight: list[int] = []

  async def __aenter__(self) -> "TeacherClient":
    headers = auth_headers(self.config)
    self._http = [httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers,
                                    transport=self._transport,
                                    timeout=httpx.Timeout(self.config.timeout_s))
                  for url in self.config.urls]
    self._in_flight = [0] * len(self._http)
    return self

  async def __aexit__(self, *exc) -> None:
    for http in self._http:
      await http.aclose()
    self._http = []

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
                            record["response"].get("finish_reason"), i, True,
                            record["response"].get("logprobs"))
    missing = [i for i in range(num_samples) if i not in results]
    if missing and self.defer_to is not None:
      for i in missing:
        body = content
        if self.config.seed_each_sample:
          body = dict(content, seed=self.config.sample_seed(keys[i]))
        self.defer_to[keys[i]] = PendingRequest(keys[i], i, content, body)
      raise Deferred(f"{len(missing)} request(s) deferred")

    def store(index: int, choice: dict, usage: dict) -> None:
      response = {"text": choice["text"], "finish_reason": choice.get("finish_reason"),
                  "usage": usage}
      if "logprobs" in choice:
        response["logprobs"] = choice["logprobs"]
      self.cache.put(keys[index], content, index, response)
      results[index] = Sample(choice["text"], choice.get("finish_reason"), index, False,
                              choice.get("logprobs"))

    if self.config.seed_each_sample:
      async def one(index: int) -> None:
        choices, usage = await self._send(
            dict(content, seed=self.config.sample_seed(keys[index])), 1)
        if not choices:
          raise TeacherError(f"{self.config.describe()}: a response had no choices")
        store(index, choices[0], usage)
      await asyncio.gather(*(one(i) for i in missing))
      missing = []
    while missing:
      n = min(len(missing), self.config.max_n_per_request)
      choices, usage = await self._send(content, n)
      if not choices:
        raise TeacherError(f"{self.config.describe()}: a response had no choices")
      for choice, index in zip(choices, missing):
        store(index, choice, usage)
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
    assert self._http, "use `async with TeacherClient(...)`"
    replica = min(range(len(self._http)), key=self._in_flight.__getitem__)
    self._in_flight[replica] += 1
    try:
      response = await self._http[replica].post(path, json=body)
    except httpx.TimeoutException as e:
      raise _RetryableError(f"timeout ({type(e).__name__})") from e
    except (httpx.TransportError, httpx.DecodingError) as e:
      raise _RetryableError(f"connection error ({type(e).__name__}: {e})") from e
    finally:
      self._in_flight[replica] -= 1
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
      choices, usage = parse_completion(payload)
    except (KeyError, TypeError) as e:
      raise _RetryableError(f"response without choices/text ({e!r})") from e
    self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
    self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
    return choices, usage
