#!/usr/bin/env bash
# Every test whose code path changes when a GPU is present, on the device in one call: NVDEC against PyAV, the frame
# transform on the GPU, the recipe's tests (packed attention kernels, compiled and checkpointed layers; its CPU cases
# too, since a GPU host changes what torch initialises) and the model's tests. CI has no GPU: run this before a change
# to model/, training/ or the GPU parts of pipelines/ lands, and record the counts in BENCHMARKS.md.
# Needs .whl/ as device_env.sh says (carried). Writes $OUT/gpu_tests.xml (JUnit) when $OUT is set.
#   usage: bash benchmarks/gpu_tests.sh [PYTEST_ARGS...]
set -euo pipefail
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 -m pytest -q -p no:cacheprovider -rfEs ${OUT:+--junitxml=$OUT/gpu_tests.xml} \
  tests/pipelines/test_nvdec.py tests/pipelines/test_frame_transform.py tests/training/test_recipe.py tests/model \
  "$@" 2>&1 | grep -v WARN
