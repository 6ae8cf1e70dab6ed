#!/usr/bin/env bash
# Prepared on 2026-11-27 for the next session with a GPU (none was lent to the session that wrote it; not yet
# run on a GPU): the evaluation section with the cross-validation folds fitted together
# (estimators/logistic.py, commit 8048462), the CUDA tests of the probe and the solver, the same section with
# 86add9d's probe (one L-BFGS run per fold), then the new probe again, all on one machine (same-call ratios;
# the repeat shows the machine's drift). Steps, from the repo root:
#   bash benchmarks/speed/device/prepare.sh runs/bench_speed/corpus       # writes .device/ (once)
#   git show 86add9d:ssl_mi_callback/estimators/probes.py > .device/probes_before.py
# then one device call: run(command="bash benchmarks/speed/probe_folds/run_device.sh", carry=[".device"]),
# about 4 minutes. Copy $OUT here and write what it shows into notes.md.
set -u
out=${OUT:?}; t0=$(date +%s)
source benchmarks/speed/device/install.sh > /dev/null 2>&1 || { echo "install failed"; exit 2; }
nvidia-smi -L
evaluation() {  # $1: result folder
  mkdir -p "$1"
  timeout 90 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$1" --work /tmp/ssl_mi_gpu_bench \
    --sections evaluation > "$1/log.txt" 2>&1
  echo "$1 rc=$? at $(( $(date +%s) - t0 )) s"; grep -h "^\[gpu\] evaluation" "$1/log.txt"
}
evaluation "$out/folds_together"
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_estimators_probes.py tests/test_estimators_bounds.py \
  tests/test_estimators_lbfgs.py tests/test_estimators_logistic.py -k cuda 2>&1 | tail -2
cp ssl_mi_callback/estimators/probes.py /tmp/probes_new.py && cp .device/probes_before.py ssl_mi_callback/estimators/probes.py
evaluation "$out/before"
cp /tmp/probes_new.py ssl_mi_callback/estimators/probes.py
evaluation "$out/folds_together_again"
