#!/usr/bin/env bash
# The GPU rows of the speed benchmark in one command on the offline GPU machine (issue 4).
#
# Here, once (needs network to PyPI; writes the git-ignored .device/, about 36 MiB):
#   bash benchmarks/speed/device/prepare.sh runs/bench_speed/corpus    # any generated corpus
# Then one device call, from the repo root there, carrying .device:
#   bash benchmarks/speed/device/run.sh            # results into $OUT (the device tool's folder)
#
# It installs fairseq from .device/wheels (install.sh), names the GPU, and runs
# `python3 -m benchmarks.speed.gpu --corpus .device/corpus --out $OUT` (sections evaluation,
# base_overhead, kmeans, hook; a section is not started after BUDGET_S seconds, default 360, so the
# whole call stays under the device's 10-minute limit; LIMIT_S, default 500, stops it regardless, leaving
# time for the install (~30 s) within the call's 600 s: the sections finished by then are already saved). Results: $OUT/results_gpu.md (the table to
# copy into benchmarks/speed/), results_gpu.json, log.txt, gpu.txt, train_logs.txt (the last lines of the hook's fairseq runs). Environment: BUDGET_S,
# SECTIONS (default all), EVAL_SECONDS (default 3600).
set -uo pipefail
out=${1:-${OUT:?give the result folder as the first argument or in OUT}}
mkdir -p "$out"
# shellcheck source=install.sh
source benchmarks/speed/device/install.sh || exit 2
{ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -V; } > "$out/gpu.txt" 2>&1
timeout "${LIMIT_S:-500}" python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$out" --work /tmp/ssl_mi_gpu_bench \
  --budget-s "${BUDGET_S:-360}" --eval-seconds "${EVAL_SECONDS:-3600}" \
  --sections "${SECTIONS:-evaluation,base_overhead,kmeans,hook}" > "$out/log.txt" 2>&1
status=$?
find /tmp/ssl_mi_gpu_bench -name train.log -exec sh -c 'echo "== $1"; tail -n 40 "$1"' _ {} \; > "$out/train_logs.txt" 2>&1
grep -v Warning "$out/log.txt" | tail -25
cat "$out/results_gpu.md" 2>/dev/null | head -60
exit $status
