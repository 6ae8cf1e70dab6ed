#!/usr/bin/env bash
# Device call 3 of 2026-11-27, kept as it ran (from .device/run3.sh; its stdout is device_stdout.txt): the
# evaluation section with the probe's own L-BFGS (estimators/lbfgs.py, commit a835cf2), the CUDA tests of the
# probe and the solver, then the same section with 4b41ff7's probe (torch's L-BFGS) on the same machine.
# To repeat: `bash benchmarks/speed/device/prepare.sh CORPUS`,
# `git show 4b41ff7:ssl_mi_callback/estimators/probes.py > .device/probes_before.py`, copy this file to
# .device/run3.sh and run `bash .device/run3.sh` on the device with .device carried. Reading: notes.md.
set -u
out=${OUT:?}; t0=$(date +%s)
source benchmarks/speed/device/install.sh > /dev/null 2>&1 || { echo "install failed"; exit 2; }
nvidia-smi -L
timeout 80 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$out" --work /tmp/ssl_mi_gpu_bench --sections evaluation > "$out/log.txt" 2>&1; echo "new rc=$? at $(( $(date +%s) - t0 )) s"
grep -h "^\[gpu\] evaluation" "$out/log.txt"
timeout 30 python3 -m pytest -q -p no:cacheprovider tests/test_estimators_probes.py tests/test_estimators_bounds.py tests/test_estimators_lbfgs.py -k cuda 2>&1 | tail -2
cp ssl_mi_callback/estimators/probes.py /tmp/probes_new.py && cp .device/probes_before.py ssl_mi_callback/estimators/probes.py
mkdir -p "$out/before"
timeout 55 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$out/before" --work /tmp/ssl_mi_gpu_bench --sections evaluation > "$out/before/log.txt" 2>&1; echo "before rc=$? at $(( $(date +%s) - t0 )) s"
cp /tmp/probes_new.py ssl_mi_callback/estimators/probes.py
grep -h "^\[gpu\] evaluation" "$out/before/log.txt" | sed 's/^/BEFORE /'
