"""A small OpenAI-compatible HTTP server with scripted faults, for client tests.

It listens on 127.0.0.1 in a thread. Each request takes the next behaviour
from the script (then `default`): `ok`, `429` (with `Retry-After`), `500`,
`malformed` (200 with a body that is not JSON), `truncated` (a body shorter
than its Content-Length, then the connection closes), `stall` (no answer for
`stall_s` seconds), `400`. `ok` answers with `choices_per_request` choices
(1 imitates a server that ignores `n`).
"""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time
from typing import Optional


class FaultServer:

  def __init__(self, script=(), default="ok", retry_after="0.2", stall_s=3.0,
               choices_per_request: Optional[int] = None):
    self.script = collections.deque(script)
    self.default = default
    self.retry_after = retry_after
    self.stall_s = stall_s
    self.choices_per_request = choices_per_request
    self.requests: list[dict] = []
    self.headers: list[dict] = []
    self.lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # Quiet.
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          server.requests.append(body)
          server.headers.append(dict(self.headers))
          behaviour = server.script.popleft() if server.script else server.default
          index = len(server.requests)
        if behaviour == "stall":
          time.sleep(server.stall_s)
          behaviour = "ok"
        if behaviour == "429":
          self._send(429, b'{"error": "rate limited"}',
                     {"Retry-After": server.retry_after})
        elif behaviour == "500":
          self._send(500, b'{"error": "boom"}')
        elif behaviour == "400":
          self._send(400, b'{"error": "bad request"}')
        elif behaviour == "malformed":
          self._send(200, b'{"choices": [ this is not json')
        elif behaviour == "truncated":
          payload = json.dumps(server.completion(body, index)).encode()
          self.send_response(200)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          self.end_headers()
          self.wfile.write(payload[:len(payload) // 3])
          self.wfile.flush()
          self.close_connection = True
          self.connection.shutdown(2)
        else:
          self._send(200, json.dumps(server.completion(body, index)).encode())

      def _send(self, status, payload, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
          self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def completion(self, body: dict, index: int) -> dict:
    n = body.get("n", 1)
    if self.choices_per_request is not None:
      n = min(n, self.choices_per_request)
    prompt = (body["messages"][-1]["content"] if "messages" in body else body["prompt"])
    choices = []
    for i in range(n):
      text = f"reply {index}.{i} to {len(prompt)} chars"
      if "messages" in body:
        choices.append({"index": i, "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop"})
      else:
        choices.append({"index": i, "text": text, "finish_reason": "stop"})
    return {"id": f"r{index}", "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n}}

  @property
  def base_url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{host}:{port}/v1"

  def __enter__(self) -> "FaultServer":
    self.thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
