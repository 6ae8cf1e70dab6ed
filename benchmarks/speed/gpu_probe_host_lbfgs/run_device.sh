#!/usr/bin/env bash
# Device call 2 of 2026-11-27, kept as it ran (from .device/run2.sh): the GPU rows with the host-side L-BFGS
# probe of commit cb6b7b7 (reverted in ce44ef7), the CUDA-only tests, and a same-machine baseline of the
# evaluation with the probe of 4b41ff7; then the host-side probe again with OMP_NUM_THREADS=1. To repeat:
# check out cb6b7b7, `bash benchmarks/speed/device/prepare.sh CORPUS`,
# `git show 4b41ff7:ssl_mi_callback/estimators/probes.py > .device/probes_before.py`, copy this file to
# .device/run2.sh, and run `bash .device/run2.sh` on the device with .device carried. Outputs: notes.md.
set -u
out=${OUT:?}
t0=$(date +%s)
LIMIT_S=300 BUDGET_S=240 bash benchmarks/speed/device/run.sh "$out" > /tmp/run_stdout.txt 2>&1; rc=$?; [ $rc = 0 ] || tail -20 /tmp/run_stdout.txt; echo "run.sh rc=$rc at $(( $(date +%s) - t0 )) s"
grep -h "^\[gpu\]\|^\[evaluation\]\|^\[hook\]\|^wrote" "$out/log.txt"
source benchmarks/speed/device/install.sh 2>/dev/null
timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_estimators_bounds.py tests/test_estimators_kmeans.py tests/test_estimators_probes.py tests/test_estimators_validation.py -k "cuda or different_devices" 2>&1 | tail -4
echo "tests done at $(( $(date +%s) - t0 )) s"
cp ssl_mi_callback/estimators/probes.py /tmp/probes_new.py && cp .device/probes_before.py ssl_mi_callback/estimators/probes.py
mkdir -p "$out/before"
timeout 100 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$out/before" --work /tmp/ssl_mi_gpu_bench --sections evaluation > "$out/before/log.txt" 2>&1; echo "before rc=$?"
cp /tmp/probes_new.py ssl_mi_callback/estimators/probes.py
grep -h "^\[gpu\] evaluation" "$out/before/log.txt" | sed 's/^/BEFORE /'
echo "before done at $(( $(date +%s) - t0 )) s"
OMP_NUM_THREADS=1 timeout 90 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out /tmp/one_thread --work /tmp/ssl_mi_gpu_bench --sections evaluation > /tmp/one_thread.log 2>&1; echo "one-thread rc=$?"
grep -h "^\[gpu\] evaluation" /tmp/one_thread.log | sed 's/^/ONE_THREAD /'
echo "all done at $(( $(date +%s) - t0 )) s"
