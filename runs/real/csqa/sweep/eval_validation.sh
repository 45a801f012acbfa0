#!/usr/bin/env bash
# Greedy and ranked accuracy of one CommonsenseQA student on 200 validation questions.
# Usage: eval_validation.sh MODEL_DIR FORMAT OUTPUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../../../.."
V=$PWD/.venv
FORMAT=$2  # trained students carry their chat template in their config
$V/bin/tinythinker evaluate --gin.MODEL_DIR="'$1'" --gin.DATASET="'csqa'" \
  --gin.DATASET_PATH="'/work/shared/data/distilling_step_by_step/cqa'" \
  --gin.SPLIT="'validation'" --gin.MAX_EXAMPLES=200 --gin.FORMAT="'$FORMAT'" \
  --gin.NUM_RUNS=0 --gin.CHAT_TEMPLATE=False --gin.OUTPUT_DIR="'$3'" \
  --gin.student.StudentSettings.max_input_length=112 \
  --gin.student.StudentSettings.max_decode_length=80 --gin.student.StudentSettings.batch_size=32
