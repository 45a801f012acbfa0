"""A scripted server with OpenAI's Batch API protocol, for the batch teacher's tests.

Endpoints: `POST /v1/files` (multipart, purpose=batch), `GET /v1/files/{id}/content`,
`POST /v1/batches`, `GET /v1/batches/{id}`, `GET /v1/batches` (newest first, `limit`,
`after`), and `POST /v1/chat/completions` / `/v1/completions` for direct
requests. Every completion's text comes from `respond(body)`. A batch is
`in_progress` until `hold` is cleared and it has been polled `polls` times;
then `completed` with an output file (and an error file for the custom ids
in `fail_once`, each failing the first time it is seen), or `failed` with no
output for the first `fail_batches` batches. `lose_create_reply` creates that
many batches but drops the connection instead of answering.
"""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import itertools
import json
import threading
import urllib.parse
from typing import Callable


class BatchServer:

  def __init__(self, respond: Callable[[dict], str], polls: int = 1, hold: bool = False,
               fail_once: tuple[str, ...] = (), lose_create_reply: int = 0,
               fail_batches: int = 0):
    self.respond = respond
    self.polls = polls
    self.hold = threading.Event()
    if hold:
      self.hold.set()
    self.fail_once = set(fail_once)
    self.lose_create_reply = lose_create_reply  # Creates, then drops the connection.
    self.fail_batches = fail_batches  # The first N batches end 'failed', no output.
    self.files: dict[str, bytes] = {}
    self.batches: dict[str, dict] = {}
    self.order: list[str] = []
    self.created = 0
    self.uploads = 0
    self.direct_requests = 0
    self.lock = threading.Lock()
    self._ids = itertools.count()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

      def _json(self, status: int, value) -> None:
        payload = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      def do_POST(self):
        path = urllib.parse.urlparse(self.path).path
        raw = self._body()
        with server.lock:
          if path == "/v1/files":
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
            parts = {p.get_param("name", header="content-disposition"): p
                     for p in message.iter_parts()}
            assert parts["purpose"].get_content().strip() == "batch"
            file_id = f"file-{next(server._ids)}"
            server.files[file_id] = parts["file"].get_payload(decode=True)
            server.uploads += 1
            return self._json(200, {"id": file_id, "object": "file", "purpose": "batch"})
          if path == "/v1/batches":
            body = json.loads(raw)
            if body["input_file_id"] not in server.files:
              return self._json(400, {"error": {"message": "no such file"}})
            batch_id = f"batch-{next(server._ids)}"
            server.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"], "status": "in_progress",
                "completion_window": body["completion_window"],
                "metadata": body.get("metadata"), "polled": 0,
                "request_counts": {"total": 0, "completed": 0, "failed": 0}}
            server.order.insert(0, batch_id)
            server.created += 1
            if server.lose_create_reply:
              server.lose_create_reply -= 1
              self.close_connection = True
              self.connection.shutdown(2)
              return None
            return self._json(200, server.public(batch_id))
          if path in ("/v1/chat/completions", "/v1/completions"):
            server.direct_requests += 1
            return self._json(200, server.completion(json.loads(raw)))
        self._json(404, {"error": {"message": f"no route {path}"}})

      def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        with server.lock:
          if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            data = server.files.get(parts[2])
            if data is None:
              return self._json(404, {"error": {"message": "no such file"}})
            self.send_response(200)
            self.send_header("Content-Type", "application/jsonl")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
          if parts[:2] == ["v1", "batches"] and len(parts) == 3:
            if parts[2] not in server.batches:
              return self._json(404, {"error": {"message": "no such batch"}})
            server.poll(parts[2])
            return self._json(200, server.public(parts[2]))
          if parts == ["v1", "batches"]:
            query = urllib.parse.parse_qs(url.query)
            limit = int(query.get("limit", ["20"])[0])
            ids = server.order
            if "after" in query:
              ids = ids[ids.index(query["after"][0]) + 1:]
            page = ids[:limit]
            return self._json(200, {"object": "list", "has_more": len(ids) > limit,
                                    "data": [server.public(i) for i in page]})
        self._json(404, {"error": {"message": f"no route {url.path}"}})

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def completion(self, body: dict) -> dict:
    text = self.respond(body)
    if "messages" in body:
      choice = {"index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"}
    else:
      choice = {"index": 0, "text": text, "finish_reason": "stop"}
    return {"id": "cmpl", "choices": [choice],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(text.split())}}

  def public(self, batch_id: str) -> dict:
    return {k: v for k, v in self.batches[batch_id].items() if k != "polled"}

  def poll(self, batch_id: str) -> None:
    """Runs the batch once it has been polled enough and is not held."""
    batch = self.batches[batch_id]
    batch["polled"] += 1
    if batch["status"] != "in_progress" or self.hold.is_set() or \
        batch["polled"] < self.polls:
      return
    if self.fail_batches:
      self.fail_batches -= 1
      batch["status"] = "failed"
      batch["errors"] = {"data": [{"code": "token_limit_exceeded",
                                   "message": "Enqueued token limit reached."}]}
      return
    outputs, errors = [], []
    for line in self.files[batch["input_file_id"]].decode().splitlines():
      request = json.loads(line)
      key = request["custom_id"]
      if key in self.fail_once:
        self.fail_once.discard(key)
        errors.append({"id": "r", "custom_id": key, "response": {
            "status_code": 500, "body": {"error": {"message": "server error"}}},
            "error": None})
        continue
      outputs.append({"id": "r", "custom_id": key, "error": None, "response": {
          "status_code": 200, "request_id": "q", "body": self.completion(request["body"])}})
    for name, records in (("output_file_id", outputs), ("error_file_id", errors)):
      if records:
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = "".join(json.dumps(r) + "\n" for r in records).encode()
        batch[name] = file_id
    batch["status"] = "completed"
    batch["request_counts"] = {"total": len(outputs) + len(errors),
                               "completed": len(outputs), "failed": len(errors)}

  @property
  def base_url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{host}:{port}/v1"

  def __enter__(self) -> "BatchServer":
    self.thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
