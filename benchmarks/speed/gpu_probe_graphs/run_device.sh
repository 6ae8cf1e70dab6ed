#!/usr/bin/env bash
# One device call measuring the probe's CUDA graphs (ssl_mi_callback/estimators/cuda_graphs.py) on a GPU, all on
# one machine: the CUDA tests of the solver, the graphs and the probe; the probe alone on the probe inputs of a
# tiny and a base evaluation (benchmarks.speed.probe_ops --device cuda, graphs off then on, per input); the
# evaluation section (wav2vec 2.0 base, 1 h of audio) with graphs off then on per precision; the same section
# with the previous commit's probe and solver (before the graphs; files from .device); then the tiny recipe's
# hook section with graphs on. Steps, from the repo root here:
#   bash benchmarks/speed/device/prepare.sh runs/bench_speed/corpus          # writes .device/ (once)
#   cp PROBE_INPUTS .device/probe_inputs.pt      # from python -m benchmarks.speed.probe_ops --inputs PROBE_INPUTS
#   git show BEFORE:ssl_mi_callback/estimators/lbfgs.py > .device/lbfgs_head.py     # BEFORE: the commit before (f5fc0b2 in the recorded run)
#   git show BEFORE:ssl_mi_callback/estimators/probes.py > .device/probes_head.py
# then one device call: run(command="bash benchmarks/speed/gpu_probe_graphs/run_device.sh", carry=[".device"]),
# about 5 minutes. $OUT gets the logs and result files; notes.md here says what they showed.
set -u
out=${OUT:?}; t0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - t0 )) s"; }
source benchmarks/speed/device/install.sh > /dev/null 2>&1 || { echo "install failed"; exit 2; }
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"
stamp tests
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_estimators_lbfgs.py tests/test_estimators_probes.py \
  tests/test_estimators_bounds.py -k "cuda or graphs" -x 2>&1 | tail -15 | tee "$out/cuda_tests.txt"
stamp probe_ops
PYTHONUNBUFFERED=1 timeout 60 python3 -m benchmarks.speed.probe_ops --inputs .device/probe_inputs.pt --device cuda \
  --cuda-graphs both --repeats 5 --out "$out/probe_ops_gpu.json" 2>&1 | grep -v Warning | tail -16
stamp evaluation
mkdir -p "$out/evaluation" "$out/before"
timeout 110 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$out/evaluation" --work /tmp/ssl_mi_gpu_bench \
  --sections evaluation --cuda-graphs both > "$out/evaluation/log.txt" 2>&1; echo "rc=$?"
grep -h "^\[gpu\] evaluation\|capture failed" "$out/evaluation/log.txt"
stamp before
package=ssl_mi_callback/estimators
cp "$package/lbfgs.py" /tmp/lbfgs_new.py && cp "$package/probes.py" /tmp/probes_new.py
cp .device/lbfgs_head.py "$package/lbfgs.py" && cp .device/probes_head.py "$package/probes.py"
timeout 60 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$out/before" --work /tmp/ssl_mi_gpu_bench \
  --sections evaluation --cuda-graphs off > "$out/before/log.txt" 2>&1; echo "rc=$?"
cp /tmp/lbfgs_new.py "$package/lbfgs.py" && cp /tmp/probes_new.py "$package/probes.py"
grep -h "^\[gpu\] evaluation" "$out/before/log.txt" | sed 's/^/BEFORE /'
if [ "${HOOK:-1}" = 1 ]; then  # HOOK=0 skips it (84 s)
  stamp hook
  mkdir -p "$out/hook"
  timeout 120 python3 -m benchmarks.speed.gpu --corpus .device/corpus --out "$out/hook" --work /tmp/ssl_mi_gpu_bench \
    --sections hook > "$out/hook/log.txt" 2>&1; echo "rc=$?"
  grep -h "overhead\|\[gpu\]" "$out/hook/log.txt" | tail -5
fi
for d in evaluation before hook; do [ -f "$out/$d/log.txt" ] && { echo "== $d"; grep -v Warning "$out/$d/log.txt" | tail -40; }; done > "$out/logs.txt"
rm -f "$out"/*/log.txt "$out/before/results_gpu.md"  # the device returns 8 files at most
stamp done
