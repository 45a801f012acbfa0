"""The Batch API teacher against a scripted server with OpenAI's files + batches
protocol: the same records as direct requests, failed requests asked again, and
a run killed after submitting that resumes without submitting again."""

import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.openai_batch_server import BatchServer
from tinythinker_jax import paths
from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.teacher import pipelines
from tinythinker_jax.teacher.client import TeacherConfig, TeacherError

EXAMPLES = datasets.load_dataset("coin_flip", seed=0)["test"][:5]
GOLD = {e.question: e.answer for e in EXAMPLES}
FAST = dict(initial_backoff_s=0.01, max_backoff_s=0.05, timeout_s=5.0, max_retries=3,
            batch_poll_s=0.02)
SETTINGS = pipelines.FinetuneCotSettings(num_samples=2)


def respond(body):
  """Step 1: a rationale that depends on the request (seeded samples differ);
  step 2: the gold answer, or the wrong one for about half the rationales."""
  prompt = body["messages"][-1]["content"]
  digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
  if prompt.endswith("Therefore, the answer is"):
    question = prompt.split("\n")[0][len("Q: "):]
    right = int(digest[:2], 16) % 2 == 0
    answer = GOLD[question] if right else {"yes": "no", "no": "yes"}[GOLD[question]]
    return f" {answer}."
  return f" The coin flips add up (trace {digest[:8]})."


def teach(output_dir, server, **overrides):
  config = TeacherConfig(base_url=server.base_url, model="scripted", seed_each_sample=True,
                         **dict(FAST, **overrides))
  return pipelines.teach(EXAMPLES, method=pipelines.Method.FINETUNE_COT,
                         answer_type=AnswerType.YES_NO, output_dir=str(output_dir),
                         teacher=config, finetune_cot=SETTINGS, progress=False)


def records(folder):
  return sorted((r["id"], r["sample_index"], r["rationale"], r["teacher_answer_text"])
                for r in paths.read_jsonl(str(folder / "records.jsonl")))


def test_batch_teach_equals_direct_requests_and_resumes_from_cache(tmp_path):
  with BatchServer(respond) as server:
    direct = teach(tmp_path / "direct", server)
    assert server.direct_requests == 20 and server.created == 0
    batched = teach(tmp_path / "batch", server, batch=True)
    # Fine-tune-CoT's two steps are two rounds: the reasoning, then the answers.
    assert server.created == 2 and server.direct_requests == 20
    assert records(tmp_path / "batch") == records(tmp_path / "direct")
    assert 0 < batched.kept < 10 and (batched.kept, batched.dropped) == (direct.kept,
                                                                         direct.dropped)
    assert batched.usage["batches"] == 2 and batched.usage["answered"] == 20
    state = paths.read_json(str(tmp_path / "batch" / "batches.json"))
    assert [b["status"] for b in state["batches"]] == ["ingested", "ingested"]
    assert [len(b["keys"]) for b in state["batches"]] == [10, 10]
    again = teach(tmp_path / "batch", server, batch=True)
    assert server.created == 2 and again.kept == batched.kept  # All from the cache.


def test_requests_that_fail_in_a_batch_are_asked_in_the_next(tmp_path):
  with BatchServer(respond) as server:
    teach(tmp_path / "direct", server)
  with BatchServer(respond) as probe:  # Which custom id the first batch's first line has.
    teach(tmp_path / "probe", probe, batch=True)
  first = paths.read_jsonl(str(tmp_path / "probe" / "batch_inputs" / "batch_0000.jsonl"))
  with BatchServer(respond, fail_once=(first[0]["custom_id"],)) as server:
    summary = teach(tmp_path / "batch", server, batch=True)
    # The failed reasoning request joins round 2; its answer needs a round 3.
    assert server.created == 3
  assert records(tmp_path / "batch") == records(tmp_path / "direct")
  errors = paths.read_jsonl(str(tmp_path / "batch" / "batch_errors" / "batch_0000.jsonl"))
  assert [e["custom_id"] for e in errors] == [first[0]["custom_id"]]
  assert summary.usage["failed"] == 1 and summary.usage["answered"] == 20


def test_a_lost_create_reply_and_a_failed_batch_submit_nothing_twice(tmp_path):
  """The server creates a batch but its reply is lost (the client must find it,
  not create another), and the first batch fails as a whole (its requests go
  into the next round)."""
  with BatchServer(respond) as server:
    teach(tmp_path / "direct", server)
  with BatchServer(respond, lose_create_reply=1) as server:
    teach(tmp_path / "lost", server, batch=True)
    assert server.created == 2  # One batch per round, none twice.
  assert records(tmp_path / "lost") == records(tmp_path / "direct")
  with BatchServer(respond, fail_batches=1) as server:
    summary = teach(tmp_path / "failed", server, batch=True)
    assert server.created == 3  # The failed round once more, then step 2.
  state = paths.read_json(str(tmp_path / "failed" / "batches.json"))
  assert state["batches"][0]["final_status"] == "failed"
  assert "token_limit_exceeded" in state["batches"][0]["errors"]
  assert records(tmp_path / "failed") == records(tmp_path / "direct")
  assert summary.usage["failed"] == 10
  with BatchServer(respond, fail_batches=5) as server:
    with pytest.raises(TeacherError, match=r"failed in 3 batches .*token_limit_exceeded"):
      teach(tmp_path / "worn", server, batch=True)
    assert server.created == 3


def teach_command(server, output_dir):
  return [sys.executable, "-m", "tinythinker_jax.cli.teach", "--gin.DATASET='coin_flip'",
          "--gin.SPLIT='test'", "--gin.MAX_EXAMPLES=5", f"--gin.OUTPUT_DIR='{output_dir}'",
          "--gin.METHOD='finetune_cot'", "--gin.pipelines.FinetuneCotSettings.num_samples=2",
          f"--gin.client.TeacherConfig.base_url='{server.base_url}'",
          "--gin.client.TeacherConfig.model='scripted'",
          "--gin.client.TeacherConfig.seed_each_sample=True",
          "--gin.client.TeacherConfig.batch=True",
          "--gin.client.TeacherConfig.batch_poll_s=0.05"]


def test_killed_after_submitting_resumes_without_submitting_again(tmp_path):
  with BatchServer(respond) as server:
    teach(tmp_path / "direct", server)
  out = tmp_path / "batch"
  with BatchServer(respond, hold=True) as server:
    process = subprocess.Popen(teach_command(server, out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while server.created < 1 and time.monotonic() < deadline:
      assert process.poll() is None, process.stderr.read().decode()[-3000:]
      time.sleep(0.05)
    time.sleep(0.3)  # Polling the held batch.
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = paths.read_json(str(out / "batches.json"))
    assert [b["status"] for b in state["batches"]] == ["submitted"]
    assert server.created == 1 and server.uploads == 1
    # As if killed between creating the batch and recording its id: the resumed
    # run must find the batch by its input file, not create another.
    del state["batches"][0]["batch_id"]
    state["batches"][0]["status"] = "uploaded"
    paths.write_json(str(out / "batches.json"), state)
    server.hold.clear()
    result = subprocess.run(teach_command(server, out), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert server.created == 2 and server.uploads == 2  # Round 1 once, round 2 once.
    assert server.direct_requests == 0  # Nothing was sent outside a batch.
  assert records(out) == records(tmp_path / "direct")


def test_dry_run_counts_requests_and_tokens_and_prices_them(tmp_path):
  config = TeacherConfig(base_url="http://127.0.0.1:9/v1", model="m",
                         prompt_price_per_million=2.5, completion_price_per_million=10.0)
  found = pipelines.dry_run(EXAMPLES, method=pipelines.Method.FINETUNE_COT,
                            answer_type=AnswerType.YES_NO, output_dir=str(tmp_path / "a"),
                            teacher=config, finetune_cot=SETTINGS)
  assert not (tmp_path / "a").exists()  # Nothing written, nothing sent (port 9).
  prompts_ = [pipelines.prompts.zero_shot_cot_reasoning(e) for e in EXAMPLES]
  per_prompt = [-(-len(p) // 4) + 4 for p in prompts_]  # ceil(chars / 4) + message
  step1, step2 = found.rounds
  assert (step1.requests, step1.prompt_tokens, step1.completion_tokens) == (
      10, 2 * sum(per_prompt), 10 * SETTINGS.max_tokens)
  assert (step2.requests, step2.prompt_tokens, step2.completion_tokens) == (
      10, 2 * sum(per_prompt) + 10 * (SETTINGS.max_tokens + 6),
      10 * SETTINGS.answer_max_tokens)
  prompt, completion = step1.prompt_tokens + step2.prompt_tokens, \
      step1.completion_tokens + step2.completion_tokens
  assert found.cost() == (prompt * 2.5 + completion * 10.0) / 1e6
  assert "at most $" in found.render()
  # What is already in the cache is free: teach two questions, then estimate five.
  with BatchServer(respond) as server:
    pipelines.teach(EXAMPLES[:2], method=pipelines.Method.FINETUNE_COT,
                    answer_type=AnswerType.YES_NO, output_dir=str(tmp_path / "b"),
                    teacher=dataclasses.replace(config, base_url=server.base_url),
                    finetune_cot=SETTINGS, progress=False)
  again = pipelines.dry_run(EXAMPLES, method=pipelines.Method.FINETUNE_COT,
                            answer_type=AnswerType.YES_NO, output_dir=str(tmp_path / "b"),
                            teacher=config, finetune_cot=SETTINGS)
  assert again.cached == 8 and again.rounds[0].requests == 6


def test_teach_dry_run_command_prints_the_estimate(tmp_path):
  out = tmp_path / "teach"
  result = subprocess.run(
      [sys.executable, "-m", "tinythinker_jax.cli.teach", "--dry_run",
       "--gin.DATASET='coin_flip'", "--gin.MAX_EXAMPLES=3", f"--gin.OUTPUT_DIR='{out}'",
       "--gin.METHOD='finetune_cot'", "--gin.client.TeacherConfig.base_url='http://127.0.0.1:9/v1'",
       "--gin.client.TeacherConfig.prompt_price_per_million=1.0",
       "--gin.client.TeacherConfig.completion_price_per_million=4.0"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "reasoning (step 1): 3 requests" in result.stdout
  assert "answer (step 2): 3 requests" in result.stdout and "at most $" in result.stdout
  assert not out.exists()
