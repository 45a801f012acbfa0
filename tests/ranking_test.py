"""Rank classification: an untrained HF model (an instruct model in its chat template)
evaluated through `tinythinker evaluate`, each option's log-likelihood against
transformers' own forward pass, and the chosen options by brute force."""

import json

import numpy as np
import pytest

from tinythinker_jax.tokenizers import hf_tokenizer
from tinythinker_jax import student as student_lib
from tinythinker_jax.data.schema import Choice, Example
from tinythinker_jax.reasoning import ranking
from tinythinker_jax.stages import evaluate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from tests.hf_tokenizer_test import (save_tokenizer_folder, smollm2_template,  # noqa: E402
                                     train_tokenizer)

QUESTIONS = [
    ("A coin is heads up. Alice flips the coin. Is the coin still heads up?",
     ["yes", "no"], "B"),
    ("Who ends with the ball?", ["Claire", "the coin", "Bob does not flip"], "A"),
    ("What does a flip do?", ["reverses the coin", "nothing", "apples", "tabs"], "A"),
]


def test_rank_requests_and_record_by_hand():
  example = Example("q", "Why?", "B", (Choice("A", "ink"), Choice("B", "a pen")))
  assert ranking.rank_requests(example) == [("Question: Why?\nAnswer:", " ink"),
                                            ("Question: Why?\nAnswer:", " a pen")]
  # sums -3 and -4 (A wins); per token -3 and -2 (B wins)
  record = ranking.rank_record(example, [-3.0, -4.0], [1, 2])
  assert (record["answer"], record["answer_per_token"]) == ("A", "B")
  assert (record["correct"], record["correct_per_token"]) == (False, True)
  with pytest.raises(Exception, match="prompt"):
    ranking.RankSettings(prompt="no placeholder").check()


def test_untrained_instruct_model_ranked_as_transformers_scores(tmp_path):
  folder = save_tokenizer_folder(train_tokenizer(), tmp_path / "model",
                                 eos_token="<|im_end|>", pad_token="<|im_end|>",
                                 bos_token="<|im_start|>", chat_template=smollm2_template())
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)).eval()
  model.save_pretrained(str(folder))
  data = tmp_path / "mc.jsonl"
  data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "choices": c,
                                      "answer": a}) + "\n"
                          for i, (q, c, a) in enumerate(QUESTIONS * 4)))
  out = tmp_path / "eval"
  settings = ranking.RankSettings(prompt="Q: {question}\nA:", target=" {option}")
  report = evaluate.run_evaluate(
      model_dir=str(folder), dataset="mc_jsonl", dataset_path=str(data), split="train",
      output_dir=str(out), format="vanilla", num_runs=0, progress=False, rank=settings,
      student=student_lib.StudentSettings(batch_size=8, max_input_length=256,
                                          max_decode_length=4, chat_template=True))
  records = [json.loads(line) for f in sorted((out / "rank").glob("rank-*.jsonl"))
             for line in f.read_text().splitlines()]
  tokenizer = hf_tokenizer.HFTokenizer(str(folder))
  prefix, suffix = tokenizer.chat_wrapping()
  by_id = {f"q{i}": (q, c, a) for i, (q, c, a) in enumerate(QUESTIONS * 4)}
  correct = 0
  assert len(records) >= 9  # the file's train split (a tenth is validation)
  for record in records:
    question, choices, gold = by_id[record["id"]]
    prompt = tokenizer.encode(settings.prompt.replace("{question}", question))
    sums = []
    for k, text in enumerate(choices):
      option = tokenizer.encode(" " + text)
      sequence = [int(tokenizer.hf_ids[t]) for t in list(prefix) + prompt + list(suffix) +
                  option]
      with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([sequence])).logits[0], -1)
      start = len(sequence) - len(option)
      sums.append(sum(float(logp[start - 1 + t, sequence[start + t]])
                      for t in range(len(option))))
      assert record["num_tokens"][k] == len(option)
    np.testing.assert_allclose(record["logprobs"], sums, atol=2e-3)
    best = "ABCD"[int(np.argmax(sums))]
    assert record["answer"] == best
    correct += best == gold
  assert report["rank"]["accuracy"] == pytest.approx(correct / len(records))
  assert report["rank"]["count"] == len(records)
  assert "rank classification" in (out / "report.md").read_text()
  assert report["majority_answer"]["answer"] == "A"


def test_report_states_students_below_the_untrained_model_first():
  from tinythinker_jax import reports
  evaluated = {
      "untrained": {"greedy": {"accuracy": 0.30}, "rank": {"accuracy": 0.56},
                    "majority_answer": {"answer": "B", "accuracy": 0.28}},
      "vanilla": {"greedy": {"accuracy": 0.247}, "rank": {"accuracy": 0.60},
                  "majority_answer": {"answer": "B", "accuracy": 0.28}},
      "finetune_cot_decoder": {"greedy": {"accuracy": 0.45}, "rank": {"accuracy": 0.50}}}
  lines = reports.findings(evaluated, reports.NAMES)
  assert lines[0] == "## Findings"
  assert ("- **vanilla (answer only) fell below the untrained model** on generated answers: "
          "24.7% against 30.0% (-5.3 points).") in lines
  assert ("- vanilla (answer only) (24.7%) is below the majority answer (always 'B': "
          "28.0%).") in lines
  assert any("Fine-tune-CoT (decoder-only format) fell below the untrained model** on "
             "ranked options: 50.0% against 56.0%" in line for line in lines)
  assert len(lines) == 6  # the heading, a blank line, three findings, a blank line
  assert reports.findings({"vanilla": evaluated["finetune_cot_decoder"]}, reports.NAMES) == []


def test_few_shot_prompts_written_by_hand():
  """The untrained model's few-shot rows: exemplars drawn from training questions
  with a seed, written before the vanilla prompt (question, options, answer on
  the next line) and before the ranking cloze (prompt and gold option's text)."""
  from tinythinker_jax.reasoning import few_shot
  pen = Example("p", "Why?", "B", (Choice("A", "ink"), Choice("B", "a pen")))
  sum_ = Example("s", "2 + 3?", "5")
  train = [pen, sum_, Example("u", "no answer", None)]
  assert few_shot.draw(train, 2, seed=3) == few_shot.draw(train, 2, seed=3)
  assert {e.id for e in few_shot.draw(train, 2)} == {"p", "s"}  # answered ones only
  with pytest.raises(Exception, match="2 answered"):
    few_shot.draw(train, 3)
  block = few_shot.generation_block([pen, sum_])
  assert block == "Why? Answer choices: (A) ink, (B) a pen.\nB\n\n2 + 3?\n5\n\n"
  test = few_shot.with_block([Example("t", "Who?", "A", (Choice("A", "me"),))], block)
  assert test[0].question == block + "Who?" and test[0].choices[0].text == "me"
  settings = few_shot.rank_settings([pen], ranking.RankSettings())
  assert settings.prompt == "Question: Why?\nAnswer: a pen\n\nQuestion: {question}\nAnswer:"
  assert ranking.rank_requests(Example("t", "Who?", "A", (Choice("A", "me"),)), settings) == [
      ("Question: Why?\nAnswer: a pen\n\nQuestion: Who?\nAnswer:", " me")]
  with pytest.raises(Exception, match="gold option"):
    few_shot.rank_settings([sum_])
