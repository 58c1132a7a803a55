#!/usr/bin/env bash
# Materialization on one GPU (issue 19), in one device session. Needs .whl/ as device_env.sh says.
#   bench PROFILE VIDEOS [REFERENCE_VIDEOS [REPEAT]]: materialize_bench.py on 30 s clips of PROFILE (720p | 1080p),
#     SigLIP-so400m in bf16: the reference script, then the Ray job decoding with PyAV (CPU tasks, 1 GPU actor)
#     and with NVDEC (8 actors sharing the GPU); JOBS=... overrides the job list, STEADY=1 adds the steady-state rows
#   usage: bash benchmarks/gpu_materialize.sh bench 720p|1080p VIDEOS [REFERENCE_VIDEOS [REPEAT]]
set -euo pipefail
source benchmarks/device_env.sh
case "$1" in
  bench) python3 benchmarks/materialize_bench.py --profile "$2" --seconds 30,30 --videos "$3" \
           --reference-videos "${4:-4}" --repeat "${5:-1}" --encoder so400m --encoder-dtype bfloat16 \
           --jobs "${JOBS:-pyav:1,nvdec:8}" ${STEADY:+--steady} 2>&1 \
           | grep -E "^\||videos \(|reference|payoff|Error|error" | grep -v WARN ;;
esac
