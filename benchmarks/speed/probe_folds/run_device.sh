#!/usr/bin/env bash
# Prepared on 2026-11-27 for the next session with a GPU (none was lent to the session that wrote it; not yet
# run on a GPU). It measures what fitting the probe's cross-validation folds together would buy on a GPU, the
# variant that was tried and reverted (notes.md): the evaluation section with the checkout's probe (one L-BFGS
# run per fold), the same section with e1e1d3f's probe (folds fitted together, estimators/logistic.py, 30 path
# iterations), then the checkout's probe again (the machine's drift), all on one machine, plus the CUDA tests.
# Steps, from the repo root:
#   bash benchmarks/speed/device/prepare.sh runs/bench_speed/corpus       # writes .device/ (once)
#   git show e1e1d3f:ssl_mi_callback/estimators/probes.py > .device/probes_joint.py
#   git show e1e1d3f:ssl_mi_callback/estimators/logistic.py > .device/logistic_joint.py
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
package=ssl_mi_callback/estimators
evaluation "$out/separate_folds"
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_estimators_probes.py tests/test_estimators_bounds.py \
  tests/test_estimators_lbfgs.py -k cuda 2>&1 | tail -2
cp "$package/probes.py" /tmp/probes_checkout.py
cp .device/probes_joint.py "$package/probes.py" && cp .device/logistic_joint.py "$package/logistic.py"
evaluation "$out/folds_together"
cp /tmp/probes_checkout.py "$package/probes.py" && rm -f "$package/logistic.py"
evaluation "$out/separate_folds_again"
