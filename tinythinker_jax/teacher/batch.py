"""Teaching through OpenAI's Batch API (or any server with the same protocol:
`POST /files` with `purpose=batch`, `POST /batches`, `GET /batches/{id}`,
`GET /batches`, `GET /files/{id}/content`).

A teaching run is replayed over the completion cache in rounds. Each round the
pipeline runs with the client in deferred mode: cached answers are used, every
other request is recorded instead of sent (`client.Deferred`). The recorded
requests become one batch (one JSONL line per sample, `custom_id` = its cache
key); once the batch ends, its answers go into the cache and the next round
replays. Rounds end when nothing is deferred: Fine-tune-CoT takes two (the
reasoning, then the answer asked for after it), TinyThinker one plus one per
round of format retries.

Nothing is submitted twice. `batches.json` in the output folder records each
batch as it goes: its local input file, the uploaded file's id, then the
batch's id. A run killed at any point resumes from there: a submitted batch is
polled again, not resubmitted; a file uploaded but not yet submitted is looked
up among the account's batches (by input file id) before a batch is created.
Creating a batch is never retried blindly: before each new attempt the
account's batches are searched for one made from the same file. Requests that
failed inside a batch, or whose whole batch failed, are asked again in the next
round, up to `TeacherConfig.batch_max_attempts` batches each; a round larger
than `batch_max_requests` is split into several batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Optional

import httpx
import tqdm

from tinythinker_jax import paths
from tinythinker_jax.teacher.cache import CompletionCache
from tinythinker_jax.teacher.client import (PendingRequest, TeacherConfig, TeacherError,
                                            auth_headers, parse_completion)

log = logging.getLogger(__name__)

STATE = "batches.json"
FINAL = ("completed", "failed", "expired", "cancelled")


class BatchRunner:
  """Submits deferred requests as batches and brings their answers into `cache`."""

  def __init__(self, config: TeacherConfig, cache: CompletionCache, output_dir: str,
               transport: Optional[httpx.AsyncBaseTransport] = None,
               progress: bool = True):
    self.config = config
    self.cache = cache
    self.folder = paths.as_path(output_dir)
    self.state_path = self.folder / STATE
    self.state = (paths.read_json(self.state_path) if self.state_path.exists()
                  else {"batches": []})
    self.progress = progress
    self._transport = transport
    self._http: Optional[httpx.AsyncClient] = None
    self.submitted = 0  # Batches created by this process (not adopted or resumed).

  async def __aenter__(self) -> "BatchRunner":
    headers = auth_headers(self.config)
    headers.pop("Content-Type")  # Set per request (JSON, or multipart for uploads).
    self._http = httpx.AsyncClient(base_url=self.config.urls[0].rstrip("/"),
                                   headers=headers, transport=self._transport,
                                   timeout=httpx.Timeout(self.config.timeout_s))
    return self

  async def __aexit__(self, *exc) -> None:
    if self._http is not None:
      await self._http.aclose()

  def _save(self) -> None:
    paths.write_json(self.state_path, self.state)

  # ------------------------------------------------------------------ HTTP

  async def _call(self, method: str, path: str, attempts: Optional[int] = None,
                  **kwargs) -> httpx.Response:
    """One API call, retried on 429/5xx/connection errors with backoff
    (`attempts` tries at most; default 1 + max_retries)."""
    assert self._http is not None, "use `async with BatchRunner(...)`"
    delay = self.config.initial_backoff_s
    attempts = self.config.max_retries + 1 if attempts is None else attempts
    for attempt in range(attempts):
      try:
        response = await self._http.request(method, path, **kwargs)
      except httpx.TransportError as e:
        problem = f"{type(e).__name__}: {e}"
      else:
        if response.status_code < 400:
          return response
        if response.status_code != 429 and response.status_code < 500:
          raise TeacherError(f"{self.config.describe()}: HTTP {response.status_code} on "
                             f"{method} {path}: {response.text[:300]}")
        problem = f"HTTP {response.status_code}"
      if attempt < attempts - 1:
        log.info("batch API %s %s failed (%s); retrying", method, path, problem)
        await asyncio.sleep(min(delay, self.config.max_backoff_s))
        delay *= 2
    raise TeacherError(f"{self.config.describe()}: {method} {path} gave up after "
                       f"{attempts} attempt(s): {problem}")

  # ---------------------------------------------------------------- rounds

  def attempts(self) -> dict[str, int]:
    """How many batches each request key has been part of."""
    counts: dict[str, int] = {}
    for batch in self.state["batches"]:
      for key in batch["keys"]:
        counts[key] = counts.get(key, 0) + 1
    return counts

  async def submit(self, pending: dict[str, PendingRequest]) -> dict[str, Any]:
    """Writes, uploads and submits one batch of the deferred requests."""
    attempts = self.attempts()
    worn = [k for k in pending if attempts.get(k, 0) >= self.config.batch_max_attempts]
    if worn:
      last = next((b.get("errors") for b in reversed(self.state["batches"])
                   if b.get("errors")), None)
      raise TeacherError(
          f"{self.config.describe()}: {len(worn)} request(s) failed in "
          f"{self.config.batch_max_attempts} batches (batch_max_attempts); the errors "
          f"are in {self.folder / 'batch_errors'} and {self.state_path}"
          + (f" (last batch error: {last})" if last else ""))
    number = len(self.state["batches"])
    input_path = self.folder / "batch_inputs" / f"batch_{number:04d}.jsonl"
    input_path.parent.mkdir(parents=True, exist_ok=True)
    paths.write_jsonl(input_path, [
        {"custom_id": key, "method": "POST", "url": "/v1" + request.path,
         "body": request.body}
        for key, request in sorted(pending.items())])
    batch = {"number": number, "input": str(input_path), "keys": sorted(pending),
             "sample_index": {k: r.sample_index for k, r in pending.items()},
             "endpoint": "/v1" + next(iter(pending.values())).path,
             "status": "written"}
    self.state["batches"].append(batch)
    self._save()
    await self._advance(batch)
    return batch

  async def _advance(self, batch: dict[str, Any]) -> None:
    """Moves a batch on from wherever a previous run left it, to ingested."""
    if batch["status"] == "written":
      upload = await self._call("POST", "/files", data={"purpose": "batch"}, files={
          "file": (f"batch_{batch['number']:04d}.jsonl",
                   paths.as_path(batch["input"]).read_bytes(), "application/jsonl")})
      batch["input_file_id"] = upload.json()["id"]
      batch["status"] = "uploaded"
      self._save()
    if batch["status"] == "uploaded":
      batch["batch_id"] = (await self._create(batch))["id"]
      batch["status"] = "submitted"
      self._save()
    if batch["status"] == "submitted":
      info = await self._wait(batch)
      await self._ingest(batch, info)
      batch["status"] = "ingested"
      batch["final_status"] = info["status"]
      self._save()

  async def _create(self, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch of `batch`'s uploaded file: found among the account's batches
    (a run killed, or a reply lost, after the server created it), else created.
    A create call is never retried blindly: before each new attempt the
    account's batches are searched again."""
    problem = ""
    for attempt in range(self.config.max_retries + 1):
      found = await self._find_batch(batch["input_file_id"])
      if found is not None:
        return found
      try:
        created = await self._call("POST", "/batches", attempts=1, json={
            "input_file_id": batch["input_file_id"], "endpoint": batch["endpoint"],
            "completion_window": self.config.batch_completion_window,
            "metadata": {"tinythinker_batch": str(batch["number"])}})
      except TeacherError as e:
        if "HTTP 4" in str(e) and "HTTP 429" not in str(e):
          raise
        problem = str(e)
        await asyncio.sleep(min(self.config.initial_backoff_s * 2 ** attempt,
                                self.config.max_backoff_s))
        continue
      self.submitted += 1
      return created.json()
    raise TeacherError(f"{self.config.describe()}: creating batch {batch['number']} failed "
                       f"{self.config.max_retries + 1} times ({problem}); "
                       f"{self.state_path} records its uploaded file")

  async def _find_batch(self, input_file_id: str) -> Optional[dict[str, Any]]:
    """A batch already created from this file (by a run killed before it could
    record the batch's id)."""
    after = None
    while True:
      params = {"limit": 100, **({"after": after} if after else {})}
      listing = (await self._call("GET", "/batches", params=params)).json()
      for batch in listing.get("data", []):
        if batch.get("input_file_id") == input_file_id:
          return batch
      if not listing.get("has_more") or not listing.get("data"):
        return None
      after = listing["data"][-1]["id"]

  async def _wait(self, batch: dict[str, Any]) -> dict[str, Any]:
    bar = tqdm.tqdm(total=len(batch["keys"]), unit="req", disable=not self.progress,
                    desc=f"batch {batch['number']} ({batch['batch_id']})")
    try:
      while True:
        info = (await self._call("GET", f"/batches/{batch['batch_id']}")).json()
        counts = info.get("request_counts") or {}
        done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
        bar.update(max(done - bar.n, 0))
        bar.set_postfix(status=info.get("status"))
        if info.get("status") in FINAL:
          return info
        await asyncio.sleep(self.config.batch_poll_s)
    finally:
      bar.close()

  async def _ingest(self, batch: dict[str, Any], info: dict[str, Any]) -> None:
    """The batch's answers into the cache; its failed requests into
    batch_errors/ (they are asked again in the next round)."""
    if info["status"] == "failed" and not info.get("output_file_id"):
      errors = (info.get("errors") or {}).get("data") or []
      batch["errors"] = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:5])
      log.warning("batch %s failed (%s); its requests go into the next round (%s)",
                  info["id"], batch["errors"] or "no reason given", self.state_path)
      batch["answered"], batch["failed"] = 0, len(batch["keys"])
      return
    inputs = {r["custom_id"]: r["body"] for r in paths.read_jsonl(batch["input"])}
    answered, failed, tokens = 0, [], {"prompt_tokens": 0, "completion_tokens": 0}
    for field in ("output_file_id", "error_file_id"):
      if not info.get(field):
        continue
      text = (await self._call("GET", f"/files/{info[field]}/content")).text
      for line in text.splitlines():
        if not line.strip():
          continue
        record = json.loads(line)
        key = record.get("custom_id")
        response = record.get("response") or {}
        if key not in inputs or key in self.cache:
          continue
        if record.get("error") or response.get("status_code") != 200:
          failed.append(record)
          continue
        try:
          choices, usage = parse_completion(response["body"])
          first = choices[0]
        except (KeyError, TypeError, IndexError):
          failed.append(record)  # A malformed answer is asked again.
          continue
        self.cache.put(key, inputs[key], batch["sample_index"][key], {
            "text": first["text"], "finish_reason": first["finish_reason"],
            "usage": usage, "batch_id": info["id"],
            **({"logprobs": first["logprobs"]} if "logprobs" in first else {})})
        answered += 1
        for name in tokens:
          tokens[name] += int(usage.get(name) or 0)
    if failed:
      (self.folder / "batch_errors").mkdir(parents=True, exist_ok=True)
      paths.write_jsonl(self.folder / "batch_errors" / f"batch_{batch['number']:04d}.jsonl",
                        failed)
    batch["answered"], batch["failed"] = answered, len(failed)
    batch.update(tokens)
    self.cache.flush()  # The answers are durable before the state says "ingested".
    log.info("batch %s (%s): %d answered, %d failed, %d missing", info["id"],
             info["status"], answered, len(failed),
             len(inputs) - answered - len(failed))

  def usage(self) -> dict[str, int]:
    """Batches, answers and tokens over every batch of this output folder."""
    batches = self.state["batches"]
    return {"batches": len(batches),
            "batch_requests": sum(len(b["keys"]) for b in batches),
            **{name: sum(b.get(name, 0) for b in batches)
               for name in ("answered", "failed", "prompt_tokens", "completion_tokens")}}

  async def resume(self) -> None:
    """Finishes every batch a previous run left before it was ingested."""
    for batch in self.state["batches"]:
      if batch["status"] != "ingested":
        await self._advance(batch)


async def run_rounds(replay: Callable[[dict[str, PendingRequest]], Awaitable[Any]],
                     runner: BatchRunner) -> Any:
  """Replays the pipeline (`replay(defer_to)` returns its result, or None while
  requests were deferred) and submits what it deferred, until a replay needs
  nothing more."""
  await runner.resume()
  while True:
    pending: dict[str, PendingRequest] = {}
    result = await replay(pending)
    if not pending:
      return result
    keys = sorted(pending)
    size = max(runner.config.batch_max_requests, 1)
    for start in range(0, len(keys), size):  # The API caps a batch's requests.
      started = time.monotonic()
      chunk = {k: pending[k] for k in keys[start:start + size]}
      batch = await runner.submit(chunk)
      log.info("batch %d: %d requests in %.0fs", batch["number"], len(chunk),
               time.monotonic() - started)
