#!/usr/bin/env bash
# Prepare the git-ignored .device/ folder that travels with the working tree to an offline GPU machine
# (CPython 3.12 with torch, torchaudio, scikit-learn and numpy, but no fairseq and no network) for the
# speed benchmark. Run HERE, from the repo root:
#
#   bash benchmarks/speed/device/prepare.sh [CORPUS_DIR]
#
# It writes:
#   .device/wheels/  cp312 / manylinux x86_64 wheels installed THERE with --no-deps --target by
#                    benchmarks/speed/device/install.sh: fairseq 0.12.2 (copied from the cache of
#                    scripts/build_wheelhouse.sh, or built with its fairseq_wheel and a python3.12 here),
#                    hydra-core, omegaconf, antlr4-python3-runtime (a pure-Python wheel built here:
#                    PyPI has only its sdist), bitarray, soundfile, cffi, pycparser, and, for
#                    `import fairseq`, sacrebleu + colorama, lxml, portalocker, regex, tabulate, PyYAML,
#                    tqdm, typing_extensions. Versions are the pins of requirements/dev-lock.txt.
#   .device/corpus/  (only with CORPUS_DIR) a copy of a generated corpus (ssl_mi_callback.corpus: *.tsv
#                    fairseq manifests, *.phn, phones.txt, corpus.json, align/, wav/) where every .wav is
#                    a 16-bit FLAC of the same rate (wav/uttX.flac) and the manifests name the .flac
#                    files. The manifests' root line (line 1) is the placeholder @SSL_MI_DEVICE_CORPUS@,
#                    which install.sh replaces with the absolute path of .device/corpus on the machine
#                    (fairseq joins the root with each path as is, so a relative root would not do).
#
# Also adds .device/ to .git/info/exclude, prints the sizes and fails if .device is over 45 MiB.
# Idempotent: wheels and corpus files already there are kept (manifests are rewritten, cheaply).
#
# Environment: PIP_PYTHON (an interpreter with pip < 24.1 that downloads; default .venv/bin/python),
# SSL_MI_WHEELHOUSE (fairseq wheel cache, default ~/.cache/ssl-mi/wheels), TARGET_PYTHON (a python3.12
# to build fairseq with when the cache lacks it), DEVICE_MAX_MIB (default 45).
set -euo pipefail

die() { printf 'prepare.sh: error: %s\n' "$*" >&2; exit 2; }
say() { printf '[device] %s\n' "$*" >&2; }

[ -f setup.cfg ] && [ -d ssl_mi_callback ] && [ -f scripts/build_wheelhouse.sh ] \
  || die "run from the repo root: bash benchmarks/speed/device/prepare.sh [CORPUS_DIR]"
ROOT=$PWD
CORPUS_SRC=${1:-}
[ $# -le 1 ] || die "usage: bash benchmarks/speed/device/prepare.sh [CORPUS_DIR]"
if [ -n "$CORPUS_SRC" ]; then
  [ -d "$CORPUS_SRC" ] || die "no such corpus folder: $CORPUS_SRC"
  CORPUS_SRC=$(cd "$CORPUS_SRC" && pwd)
fi
PIP_PYTHON=${PIP_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PIP_PYTHON" ] || die "no $PIP_PYTHON: run scripts/setup_env.sh or set PIP_PYTHON (an interpreter with pip < 24.1 and soundfile)"
"$PIP_PYTHON" - <<'EOF' || die "$PIP_PYTHON has pip >= 24.1 (rejects omegaconf 2.0.6's metadata) or no pip"
import sys
from pip import __version__
sys.exit(tuple(int(p) for p in __version__.split(".")[:2]) >= (24, 1))
EOF
CACHE=${SSL_MI_WHEELHOUSE:-$HOME/.cache/ssl-mi/wheels}
MAX_MIB=${DEVICE_MAX_MIB:-45}
LOCK=$ROOT/requirements/dev-lock.txt
[ -f "$LOCK" ] || die "missing $LOCK"

# The shared helpers (fairseq_wheel, build_pure_wheel, find_python); sourcing only defines them.
# shellcheck source=../../../scripts/build_wheelhouse.sh
source "$ROOT/scripts/build_wheelhouse.sh"

DEV=$ROOT/.device
WHEELS=$DEV/wheels
mkdir -p "$WHEELS"

# --- .device/ stays out of git -----------------------------------------------------------------------
EXCLUDE=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
if ! grep -qxF '/.device/' "$EXCLUDE" 2>/dev/null && ! grep -qxF '.device/' "$EXCLUDE" 2>/dev/null; then
  echo '/.device/' >>"$EXCLUDE"
  say "added /.device/ to $EXCLUDE"
fi

# --- 1. wheels ------------------------------------------------------------------------------------------
# pin NAME: the version requirements/dev-lock.txt pins for NAME (name compared as PEP 503 normalizes it).
pin() {
  "$PIP_PYTHON" - "$LOCK" "$1" <<'EOF'
import re, sys
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
lock, name = sys.argv[1:]
for line in open(lock):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#\\]+)", line)
    if m and canon(m.group(1)) == canon(name):
        print(m.group(2)); break
else:
    sys.exit(f"prepare.sh: error: requirements/dev-lock.txt pins no {name}")
EOF
}
# have NAME VERSION: is a wheel of NAME==VERSION already in .device/wheels?
have() {
  local stem w n
  stem=$(printf '%s_%s_' "$1" "$2" | tr 'A-Z.-' 'a-z__')
  for w in "$WHEELS"/*.whl; do
    [ -f "$w" ] || continue
    n=$(basename "$w" | tr 'A-Z.-' 'a-z__')
    [[ "$n" == "$stem"* ]] && return 0
  done
  return 1
}

# fairseq 0.12.2 for cp312: the cached build, else build it with a python3.12 of this machine.
if ls "$WHEELS"/fairseq-0.12.2-cp312-cp312-*.whl >/dev/null 2>&1; then
  say "fairseq: already there"
else
  fairseq=""
  for w in "$CACHE"/cp312/fairseq-0.12.2-cp312-cp312-*.whl "$CACHE"/fairseq-0.12.2-cp312-cp312-*.whl; do
    [ -f "$w" ] && { fairseq=$w; break; }
  done
  if [ -z "$fairseq" ]; then
    py312=$(find_python 3.12) || py312=""
    [ -z "$py312" ] && [ -x /root/.pyenv/versions/3.12.1/bin/python3.12 ] && py312=/root/.pyenv/versions/3.12.1/bin/python3.12
    [ -n "$py312" ] || die "no fairseq 0.12.2 cp312 wheel in $CACHE/cp312 and no python3.12 here to build it (set TARGET_PYTHON=/path/to/python3.12)"
    fairseq=$(fairseq_wheel "$py312" "$CACHE") || die "building the fairseq cp312 wheel with $py312 failed (see above)"
  fi
  cp "$fairseq" "$WHEELS/"
  say "fairseq: copied $(basename "$fairseq")"
fi

# antlr4-python3-runtime 4.8: sdist only on the index; build its pure-Python wheel.
version=$(pin antlr4-python3-runtime)
if have antlr4-python3-runtime "$version"; then
  say "antlr4-python3-runtime $version: already there"
else
  constraints=$(mktemp)
  echo "antlr4-python3-runtime==$version" >"$constraints"
  build_pure_wheel "$PIP_PYTHON" antlr4-python3-runtime "$WHEELS" "$constraints" \
    || { rm -f "$constraints"; die "building antlr4-python3-runtime's wheel failed (see above)"; }
  rm -f "$constraints"
fi

# The rest: binary wheels for CPython 3.12 on manylinux (glibc <= 2.28, which torch's wheels need too).
PACKAGES=(hydra-core omegaconf bitarray soundfile cffi pycparser
          sacrebleu colorama lxml portalocker regex tabulate PyYAML tqdm typing_extensions)
specs=()
for name in "${PACKAGES[@]}"; do
  version=$(pin "$name")
  if have "$name" "$version"; then
    say "$name $version: already there"
  else
    specs+=("$name==$version")
  fi
done
if [ ${#specs[@]} -gt 0 ]; then
  platforms=(--platform manylinux2014_x86_64)
  for minor in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  say "downloading ${specs[*]}"
  "$PIP_PYTHON" -m pip --disable-pip-version-check -q download --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 "${platforms[@]}" -d "$WHEELS" "${specs[@]}" \
    || die "pip download failed (see above): no CPython 3.12 manylinux x86_64 wheel for one of ${specs[*]}"
fi

# --- 2. the corpus, with FLAC audio -------------------------------------------------------------------
if [ -n "$CORPUS_SRC" ]; then
  say "copying $CORPUS_SRC to .device/corpus (WAV -> 16-bit FLAC)"
  "$PIP_PYTHON" - "$CORPUS_SRC" "$DEV/corpus" <<'EOF' || die "copying the corpus failed (see above)"
import os, re, shutil, sys
from pathlib import Path
import soundfile as sf

PLACEHOLDER = "@SSL_MI_DEVICE_CORPUS@"
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
entry = re.compile(r"^[^\t]+\t\d+$")

def is_manifest(path: Path) -> bool:
    """A fairseq manifest: a root line without a tab, then relative_path<TAB>num_samples lines."""
    lines = [l.rstrip("\r\n") for l in path.read_text().splitlines()]
    return bool(lines) and "\t" not in lines[0] and all(entry.match(l) for l in lines[1:] if l.strip())

converted = copied = kept = manifests = 0
for here, dirs, files in os.walk(src):
    dirs.sort()
    rel = Path(here).relative_to(src)
    for name in sorted(files):
        source = Path(here, name)
        if source.suffix.lower() == ".wav":
            target = dst / rel / (source.stem + ".flac")
            if target.exists() and target.stat().st_size > 0:
                kept += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            data, rate = sf.read(str(source), dtype="int16", always_2d=False)
            tmp = target.with_suffix(".flac.part")
            sf.write(str(tmp), data, rate, format="FLAC", subtype="PCM_16")
            tmp.replace(target)
            converted += 1
        elif rel == Path(".") and source.suffix == ".tsv" and is_manifest(source):
            lines = source.read_text().splitlines()
            out = [PLACEHOLDER]
            for line in lines[1:]:
                if line.strip():
                    path, samples = line.split("\t")
                    if path.lower().endswith(".wav"):
                        path = path[:-4] + ".flac"
                    line = f"{path}\t{samples}"
                out.append(line)
            target = dst / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(out) + "\n")
            manifests += 1
        else:
            target = dst / rel / name
            if target.exists() and target.stat().st_size == source.stat().st_size:
                kept += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied += 1
print(f"[device] corpus: {converted} WAV -> FLAC, {copied} files copied, {kept} already there, "
      f"{manifests} manifests rewritten (root line {PLACEHOLDER})", file=sys.stderr)
EOF
fi

# --- 3. sizes -----------------------------------------------------------------------------------------
du -sh "$DEV"/* >&2
mib=$(du -sm "$DEV" | cut -f1)
[ "$mib" -le "$MAX_MIB" ] || die ".device is ${mib} MiB, over the ${MAX_MIB} MiB limit"
say "ready: .device is ${mib} MiB ($(ls "$WHEELS"/*.whl | wc -l) wheels); THERE: source benchmarks/speed/device/install.sh"
