#!/usr/bin/env bash
# The 7B training-step levers on one GPU, in one device session: `train_bench.py step` per case, beside the anchor's
# first row (plain HF + peft, activation checkpointing, LoRA dropout 0.05). Needs .whl/ as device_env.sh says and
# the anchor script (../shared/anchors/llm_lora_levers.py) in .whl/ (carried).
# `scale WORKERS STRATEGY` runs the same `pave train` on WORKERS GPUs (nvidia-h200-x2 for 2) with ddp or fsdp.
# `gputest` runs the recipe's tests on the GPU (pytest, pluggy, iniconfig, pytest-timeout wheels); `packed 7b|0.5b
# CASE...` times batches, e.g. "1" "4 --pack" (packed: FlexAttention), "8 --pack --profile 2" (+ torch.profiler's
# top ops); 0.5B is prepared in /tmp/bench05.
#   usage: bash benchmarks/gpu_train_speed.sh prepare|levers|anchor|train|scale N ddp|fsdp|gputest|packed 7b|0.5b CASE...
set -euo pipefail
source benchmarks/device_env.sh
DIR=/tmp/bench7b
case "$1" in
  prepare) python3 benchmarks/train_bench.py prepare $DIR --preset 7b --videos 8 ;;
  levers)
    for case in "full --no-compile" "auto --no-compile" "auto --compile"; do
      python3 benchmarks/train_bench.py step $DIR --batch 1 2 --checkpointing $case 2>&1 | grep -E '^\{|activation checkpointing|Error'
    done ;;
  anchor) python3 .whl/anchor_llm_lora_levers.py 1:6332:1:0.05:0:0 ;;
  gputest) python3 -m pytest -q -p no:cacheprovider tests/training/test_recipe.py 2>&1 | tail -3 ;;
  packed)  # packed PRESET "BATCH [--pack]"...: one process per case (a compiled process that changes sequence
    # length is its own question)
    preset=$2; dir=$([ "$preset" = 7b ] && echo $DIR || echo /tmp/bench05); shift 2
    [ -f $dir/base/config.json ] || python3 benchmarks/train_bench.py prepare $dir --preset $preset --videos 16 | tail -1
    for case in "$@"; do  # each case within 4 minutes (a hang must not eat the device call)
      timeout 240 python3 benchmarks/train_bench.py step $dir --batch $case --iters 5 --warmup 3 2>&1 \
        | grep -E '^\{|recompil|Error|^profile|^  (gpu|cpu) ' | cut -c1-700 || echo "case '$case': exit $?"
    done ;;
  train|scale)  # `pave train` (Ray Train, GPU workers) with the defaults: auto checkpointing, compiled layers
    workers=${2:-1}; strategy=${3:-ddp}; run=/tmp/run7b-$workers-$strategy
    rm -rf $run
    # TensorBoard events need the tensorboard package, which the GPU image may lack (the metrics stay in metrics.jsonl)
    tb=$(python3 -c "import tensorboard" 2>/dev/null && echo --tracking.tensorboard || echo --tracking.no-tensorboard)
    python3 -m jobs.cli train --store $DIR/store --annotations $DIR/annotations.json --base-model $DIR/base \
      --out $run --workers $workers --strategy $strategy --gpus-per-worker 1 --cpus-per-worker 4 --batch-size 1 \
      --steps 40 --report-every 10 --checkpoint-every 1000 $tb 2>&1 \
      | grep -E "activation checkpointing|step [0-9]+/|trained|Error|error" | grep -v Warning
    python3 benchmarks/train_bench.py report $run ;;
esac
