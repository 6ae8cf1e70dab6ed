#!/usr/bin/env bash
# The main job on a fresh machine (called by `make demo` after setup): generate a small speech corpus
# with espeak-ng/flite, pretrain a tiny wav2vec 2.0 on CPU with MI checkpoint selection on, then print
# the MI history and the exported best checkpoint. About 3-4 minutes on 2 cores.
#   DEMO_DIR (default runs/demo), DEMO_MINUTES (corpus size, default 12), DEMO_UPDATES (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${DEMO_DIR:-runs/demo}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=.venv/bin/python

echo "== 1/3 speech corpus ($out/corpus)"
$py -m ssl_mi_callback.corpus --out "$out/corpus" --minutes "${DEMO_MINUTES:-12}" --seed 0 \
    --splits train=0.65,valid=0.05,heldout=0.2,probe_train=0.05,probe_test=0.05

echo "== 2/3 tiny wav2vec 2.0 pretraining with task.mi_* on (log: $out/train.log)"
rm -rf "$out/checkpoints"
# The exit status of the training is read from PIPESTATUS right after the pipeline, with errexit off
# (grep exits 1 when it shows nothing; `|| true` would reset PIPESTATUS and hide a failed training).
set +e
.venv/bin/ssl-mi-fairseq-hydra-train --config-dir recipes/fairseq --config-name tiny_wav2vec2 \
    task.data="$out/corpus" checkpoint.save_dir="$out/checkpoints" hydra.run.dir="$out/hydra" \
    optimization.max_update="${DEMO_UPDATES:-300}" 2>&1 | tee "$out/train.log" | grep --line-buffered -E "valid on|MI "
statuses=("${PIPESTATUS[@]}")
set -e
[ "${statuses[0]}" = 0 ] || { echo "training failed (exit status ${statuses[0]}); see $out/train.log" >&2; exit 1; }
[ "${statuses[1]}" = 0 ] || { echo "could not write $out/train.log (tee exit status ${statuses[1]})" >&2; exit 1; }
best="$out/checkpoints/checkpoint_mi_best.pt"
[ -s "$best" ] && [ -s "${best%.pt}.json" ] || {
    echo "training ended but wrote no exported best checkpoint $best (+ .json sidecar); see $out/train.log" >&2; exit 1; }

echo "== 3/3 MI history ($out/checkpoints/mi_history.jsonl)"
.venv/bin/ssl-mi report "$out/checkpoints/mi_history.jsonl"
echo
echo "best checkpoint by MI: $best"
echo "its sidecar:           ${best%.pt}.json"
echo "fairseq's checkpoint_best.pt (full training state) follows the same MI: $out/checkpoints/checkpoint_best.pt"
