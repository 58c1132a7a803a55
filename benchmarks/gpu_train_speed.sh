#!/usr/bin/env bash
# The 7B training-step levers on one GPU, in one device session: `train_bench.py step` per case, beside the anchor's
# first row (plain HF + peft, activation checkpointing, LoRA dropout 0.05). Needs .whl/ as device_env.sh says and
# the anchor: a plain transformers + peft baseline script (not shipped) that the benchmarker supplies as
# .whl/anchor_llm_lora_levers.py (carried).
# `scale WORKERS STRATEGY` runs the same `pave train` on WORKERS GPUs (nvidia-h200-x2 for 2) with ddp or fsdp.
# `packed 7b|0.5b CASE...` times batches, e.g. "1" "4 --pack" (packed: SDPA per sample), "8 --pack --profile 2" (+ torch.profiler's
# top ops), "4 --pack --memory-peak" (what is alive at the step's memory peak), "1 --samples 8" (8 samples in turn);
# 7b-varied has samples of different lengths. `attention` times the attention kernels alone.
#   usage: bash benchmarks/gpu_train_speed.sh prepare|levers|anchor|train|scale N ddp|fsdp|attention|
#          packed 7b|7b-varied|0.5b CASE...
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
  attention)  # 7B heads, then 0.5B's
    python3 benchmarks/attention_bench.py --batch 4
    python3 benchmarks/attention_bench.py --heads 14 --kv-heads 2 --head-dim 64 --batch 8 ;;
  packed)  # packed PRESET "BATCH [--pack]"...: one process per case (a compiled process that changes sequence
    # length is its own question)
    # 7b-varied: videos of 8 to 32 frames (samples of 1.7k to 6.8k tokens)
    preset=$2; dir=/tmp/bench-$preset; shift 2
    [ -f $dir/base/config.json ] || python3 benchmarks/train_bench.py prepare $dir --preset ${preset%-varied} \
      --videos 16 $([[ $preset == *-varied ]] && echo --min-frames 8) | tail -1
    for case in "$@"; do  # each case within 5 minutes (a hang must not eat the device call)
      timeout 300 python3 benchmarks/train_bench.py step $dir --batch $case --iters 5 --warmup 3 2>&1 \
        | grep -E '^\{|Recompiling function|Error|^profile|^memory|^  (gpu|cpu|mem) ' | cut -c1-700 \
        || echo "case '$case': exit $?"
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
