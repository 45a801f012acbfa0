"""The library of run stages: what each `tinythinker` verb runs.

| stage | what | verb |
|---|---|---|
| `teach` | a dataset split taught by a teacher (LLM, llama.cpp, rule-based) | `teach`, `data` |
| `materialize` | seqio tasks as the arrays training reads | `materialize` |
| `phase1` | a student trained on rationale records | `train` (`runs/sft.gin`) |
| `phase2` | DPO/RPO/IPO on preference pairs | `train` (`runs/dpo.gin`) |
| `validation` | chain accuracy as a training evaluation hook (model selection) | |
| `sample` | the student's own chains -> preference pairs, reference log-probs | `sample` |
| `reflect` | rounds of sample -> phase 2 (or rejection-sampling SFT) -> validate | `reflect` |
| `infer`, `evaluate`, `score` | chains over a split; accuracy reports; log-likelihoods | `infer`, `evaluate`, `score` |
| `export` | a student as a Hugging Face folder | `export` |
| `baselines` | the comparisons at equal compute (budgets from run state) | |
| `pipeline` | the stages in sequence, resumable, in one run folder | `pipeline`, `demo` |

Stages import the lower floors (models, training, reasoning, data, teacher,
checkpoints) and each other in this order; a verb's module
(`tinythinker_jax/<verb>.py`) only parses flags and gin and calls one stage.
"""
