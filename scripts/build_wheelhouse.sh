#!/usr/bin/env bash
# Build a wheelhouse: every wheel needed to install ssl_mi_callback on an air-gapped Linux x86_64
# (GPU) node, which then installs it with scripts/install_offline.sh (copied into the wheelhouse).
#
#   scripts/build_wheelhouse.sh OUT_DIR [--python-version 3.11|3.12|3.13] [--extras fairseq,audio,...]
#                               [--glibc 2.28] [--wheel FILE.whl]...
#
#   --python-version  Python of the target node (default: the Python that runs pip here)
#   --extras          extras of ssl_mi_callback to include (default fairseq; 'none' for the core only)
#   --glibc           newest manylinux glibc the node has (default 2.28: torch's wheels need it)
#   --wheel FILE      put a wheel you already have into the wheelhouse instead of downloading that
#                     package (e.g. a CPU-only torch, or numpy 1.26.4 built for Python 3.13, which
#                     PyPI lacks); its version replaces the lock's pin. Repeatable.
#
# Wheels come from the package index for the target (pip download --only-binary=:all:
# --python-version X --platform manylinux_2_17..2_<glibc>_x86_64), pinned by requirements/dev-lock.txt
# where it names the package (a constraints file). fairseq 0.12.2 has no wheel on the index: it is
# built from source with an interpreter of the target version (the same build as setup_env.sh, cached
# per Python version in SSL_MI_WHEELHOUSE). This package's own wheel is built from the source tree.
#
# Environment: PYTHON (runs pip here; needs pip < 24.1 for omegaconf 2.0.6's metadata; default
# .venv/bin/python, else python3), TARGET_PYTHON (an interpreter of the target version for the
# fairseq build; default: pythonX.Y on PATH, then pyenv's), SSL_MI_WHEELHOUSE (cache of built fairseq
# wheels, default ~/.cache/ssl-mi/wheels).
#
# Sourced (`source scripts/build_wheelhouse.sh`), this file only defines its functions, e.g.
# fairseq_wheel, so that setup_env.sh can share the fairseq build.

wh_say() { printf '[wheelhouse] %s\n' "$*" >&2; }
wh_die() { printf 'build_wheelhouse.sh: error: %s\n' "$*" >&2; exit 2; }

FAIRSEQ_VERSION=0.12.2
# Pure-Python dependencies of which the index has no wheel (antlr4-python3-runtime 4.8: hydra-core 1.0.7's
# parser runtime); their wheels are built here.
SOURCE_ONLY=(antlr4-python3-runtime)

# python_tag PYTHON: "cp311" for a CPython 3.11 interpreter.
python_tag() {
  "$1" -c 'import sys; print("cp%d%d" % sys.version_info[:2])'
}

# fairseq_wheel PYTHON CACHE_DIR: print the path of a fairseq 0.12.2 wheel for PYTHON's version,
# building it into CACHE_DIR/<tag>/ once (about a minute). Build isolation stays ON: with torch
# importable at build time fairseq's setup.py adds C++ extensions whose sources are missing from the
# PyPI tarball. A wheel that setup_env.sh left directly in CACHE_DIR is reused too.
fairseq_wheel() {
  local py=$1 cache=$2 tag wheel
  tag=$(python_tag "$py") || return 1
  for wheel in "$cache/$tag"/fairseq-$FAIRSEQ_VERSION-"$tag"-"$tag"-*.whl \
               "$cache"/fairseq-$FAIRSEQ_VERSION-"$tag"-"$tag"-*.whl; do
    [ -f "$wheel" ] && { printf '%s\n' "$wheel"; return 0; }
  done
  wh_say "building the fairseq $FAIRSEQ_VERSION wheel for $tag with $py (about a minute, once)"
  mkdir -p "$cache/$tag"
  "$py" -m pip --disable-pip-version-check -q wheel --no-deps -w "$cache/$tag" "fairseq==$FAIRSEQ_VERSION" >&2 \
    || return 1
  for wheel in "$cache/$tag"/fairseq-$FAIRSEQ_VERSION-"$tag"-"$tag"-*.whl; do
    [ -f "$wheel" ] && { printf '%s\n' "$wheel"; return 0; }
  done
  wh_say "pip built no fairseq wheel for $tag in $cache/$tag"
  return 1
}

# build_pure_wheel PYTHON NAME DIR CONSTRAINTS: build NAME (as pinned by CONSTRAINTS) from source into
# DIR; fails unless the result is pure Python (a *-none-any wheel), the only kind that fits any target.
build_pure_wheel() {
  local py=$1 name=$2 dir=$3 constraints=$4 before after
  before=$(ls "$dir")
  wh_say "$name: the index has only its source; building its wheel"
  "$py" -m pip --disable-pip-version-check -q wheel --no-deps --no-binary "$name" -c "$constraints" -w "$dir" "$name" >&2 \
    || return 1
  after=$(ls "$dir")
  for wheel in $(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after")); do
    [[ "$wheel" == *-none-any.whl ]] || { wh_say "$wheel is not pure Python: it would fit only this machine"; return 1; }
  done
}

# find_python X.Y: print an interpreter of Python X.Y (TARGET_PYTHON, pythonX.Y on PATH, pyenv's),
# or nothing. Each candidate is run, so a pyenv shim for an inactive version does not count.
find_python() {
  local version=$1 candidate
  local candidates=("${TARGET_PYTHON:-}" "python$version")
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/"$version"*/bin/python"$version")
  fi
  for candidate in "${candidates[@]}"; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))" \
      >/dev/null 2>&1; then
      command -v "$candidate" 2>/dev/null || printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

build_wheelhouse_main() {
  set -euo pipefail
  local root out="" python_version="" extras="fairseq" glibc="2.28" seeds=()
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  while [ $# -gt 0 ]; do
    case "$1" in
      --python-version) [ $# -ge 2 ] || wh_die "--python-version needs a value, e.g. 3.12"; python_version=$2; shift 2 ;;
      --extras) [ $# -ge 2 ] || wh_die "--extras needs a value, e.g. fairseq,audio"; extras=$2; shift 2 ;;
      --glibc) [ $# -ge 2 ] || wh_die "--glibc needs a value, e.g. 2.28"; glibc=$2; shift 2 ;;
      --wheel) [ $# -ge 2 ] || wh_die "--wheel needs a .whl file"; seeds+=("$2"); shift 2 ;;
      -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; return 0 ;;
      -*) wh_die "unknown option $1 (see --help)" ;;
      *) [ -z "$out" ] || wh_die "give one OUT_DIR (got '$out' and '$1')"; out=$1; shift ;;
    esac
  done
  [ -n "$out" ] || wh_die "usage: scripts/build_wheelhouse.sh OUT_DIR [--python-version 3.11|3.12|3.13] [--extras fairseq,...]"
  [[ "$glibc" =~ ^2\.([0-9]+)$ ]] || wh_die "--glibc must look like 2.28, got '$glibc'"
  local glibc_minor=${BASH_REMATCH[1]}
  [ "$glibc_minor" -ge 17 ] || wh_die "--glibc must be >= 2.17 (manylinux2014), got $glibc"
  [ "$extras" = none ] && extras=""
  local seed
  for seed in ${seeds[@]+"${seeds[@]}"}; do
    [[ "$seed" == *.whl && -f "$seed" ]] || wh_die "--wheel: no such wheel file: $seed"
  done

  # --- the pip that downloads (< 24.1: newer pip rejects omegaconf 2.0.6's metadata) ---------------
  local tool=${PYTHON:-}
  if [ -z "$tool" ]; then
    if [ -x "$root/.venv/bin/python" ]; then tool=$root/.venv/bin/python; else tool=python3; fi
  fi
  "$tool" -m pip --version >/dev/null 2>&1 || wh_die "$tool has no pip: set PYTHON to an interpreter with pip < 24.1"
  "$tool" - <<'EOF' || wh_die "$tool has pip >= 24.1, which rejects omegaconf 2.0.6's metadata: run scripts/setup_env.sh (its .venv has pip < 24.1) or set PYTHON to an interpreter with pip < 24.1"
import sys
from pip import __version__
sys.exit(tuple(int(p) for p in __version__.split(".")[:2]) >= (24, 1))
EOF
  local local_version
  local_version=$("$tool" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  python_version=${python_version:-$local_version}
  [[ "$python_version" =~ ^3\.([0-9]+)$ ]] || wh_die "--python-version must look like 3.12, got '$python_version'"
  local tag=cp3${BASH_REMATCH[1]}

  # --- an interpreter of the target version, for the fairseq build -----------------------------------
  local target_python=""
  if [[ ",$extras," == *,fairseq,* ]]; then
    if [ "$python_version" = "$local_version" ] && [ -z "${TARGET_PYTHON:-}" ]; then
      target_python=$tool
    else
      target_python=$(find_python "$python_version") || wh_die "building fairseq's wheel for Python $python_version needs a python$python_version interpreter and none was found (tried TARGET_PYTHON, python$python_version on PATH, pyenv): install one (Debian: apt-get install python$python_version-venv; or pyenv install $python_version) or set TARGET_PYTHON=/path/to/python$python_version"
      "$target_python" -m pip --version >/dev/null 2>&1 || wh_die "$target_python has no pip, needed to build fairseq's wheel: install it (python$python_version -m ensurepip, or apt-get install python3-pip)"
    fi
  fi

  if [ -d "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -f "$out/wheelhouse.json" ]; then
    wh_die "$out is not empty and not a wheelhouse: give a new or empty folder"
  fi
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  local work
  work=$(mktemp -d)
  trap "rm -rf '$work'" EXIT

  # --- 1. our own wheel, built from a clean copy of the source tree ------------------------------------
  wh_say "building the ssl_mi_callback wheel"
  mkdir -p "$work/src"
  (cd "$root" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - setup.cfg pyproject.toml README.md ssl_mi_callback) \
    | (cd "$work/src" && tar -xf -)
  rm -f "$out"/ssl_mi_callback-*.whl
  "$tool" -m pip --disable-pip-version-check -q wheel --no-deps -w "$out" "$work/src" >&2
  local own_wheel
  own_wheel=$(ls "$out"/ssl_mi_callback-*.whl)

  # --- 2. the requirements of the chosen extras, for the target Python -------------------------------
  # fairseq itself is left out: it is built below and installed with --no-deps (its metadata asks for
  # torchaudio, which it does not need for wav2vec 2.0/HuBERT); the fairseq extra lists its real needs.
  "$tool" - "$own_wheel" "$python_version" "$extras" "$root/requirements/dev-lock.txt" "$work" \
    ${seeds[@]+"${seeds[@]}"} <<'EOF' || exit 2
import re, sys, zipfile
from pathlib import Path
from pip._vendor.packaging.requirements import Requirement

wheel, python_version, extras, lock, work, *seeds = sys.argv[1:]
canon = lambda name: re.sub(r"[-_.]+", "-", name).lower()
with zipfile.ZipFile(wheel) as archive:
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    lines = archive.read(metadata).decode().splitlines()
known = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")]
chosen = [e.strip() for e in extras.split(",") if e.strip()]
unknown = [e for e in chosen if e not in known]
if unknown:
    sys.exit(f"build_wheelhouse.sh: error: unknown extra {unknown[0]!r}: choose from {', '.join(known)}")
environment = dict(python_version=python_version, python_full_version=python_version + ".0", sys_platform="linux",
                   platform_system="Linux", platform_machine="x86_64", os_name="posix", implementation_name="cpython",
                   platform_python_implementation="CPython")
wanted = []
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    requirement = Requirement(line.split(":", 1)[1].strip())
    applies = requirement.marker is None or any(
        requirement.marker.evaluate({**environment, "extra": extra}) for extra in [""] + chosen)
    if applies and canon(requirement.name) != "fairseq":
        requirement.marker = None
        wanted.append(str(requirement))
wanted.append("pip<24.1")  # installed first on the node: fairseq's omegaconf 2.0.6 needs pip < 24.1
Path(work, "requirements.in").write_text("\n".join(wanted) + "\n")
# The lock's pins as constraints, except for packages given as --wheel (pinned to that wheel instead).
seeded = {canon(Path(s).name.split("-")[0]): Path(s).name.split("-")[1] for s in seeds}
pins = [l.strip() for l in Path(lock).read_text().splitlines() if l.strip() and not l.startswith("#")] if Path(lock).is_file() else []
pins = [p for p in pins if canon(re.split(r"[=<>!~ ;]", p)[0]) not in seeded]
pins += [f"{name}=={version}" for name, version in seeded.items()]
Path(work, "constraints.txt").write_text("\n".join(pins) + "\n")
EOF

  # --- 3. download every wheel for the target ----------------------------------------------------
  # Pure-Python dependencies that the index has only as source (SOURCE_ONLY) are built here first:
  # their py3-none-any wheel fits any target. Anything else without a wheel stops the build by name.
  local seed_dir="$work/seeds" platforms=() minor name missing
  mkdir -p "$seed_dir"
  for seed in ${seeds[@]+"${seeds[@]}"}; do cp "$seed" "$seed_dir/"; done
  for name in "${SOURCE_ONLY[@]}"; do
    build_pure_wheel "$tool" "$name" "$seed_dir" "$work/constraints.txt" || wh_die "building $name's wheel failed (see above)"
  done
  for minor in $(seq "$glibc_minor" -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64)  # pip adds manylinux2010/manylinux1 to this one
  for seed in ${seeds[@]+"${seeds[@]}"}; do  # a locally built --wheel (e.g. numpy 1.26.4 for CPython 3.13)
    case "$seed" in *-linux_x86_64.whl) platforms+=(--platform linux_x86_64); break ;; esac
  done
  wh_say "downloading wheels for CPython $python_version, manylinux glibc <= $glibc (extras: ${extras:-none})"
  if ! "$tool" -m pip --disable-pip-version-check download --only-binary=:all: \
      --python-version "$python_version" --implementation cp --abi "$tag" "${platforms[@]}" \
      --find-links "$seed_dir" -c "$work/constraints.txt" -r "$work/requirements.in" -d "$out" \
      >"$work/download.log" 2>&1; then
    tail -n 15 "$work/download.log" >&2
    missing=$(sed -n -E 's/.*(No matching distribution found for|Cannot install) ([A-Za-z0-9_.-]*[A-Za-z0-9]).*/\2/p' \
      "$work/download.log" | head -n1)
    wh_die "pip download failed${missing:+ at $missing} (log above): no wheel of it for CPython $python_version on manylinux glibc <= $glibc that fits requirements/dev-lock.txt's pin; give one with --wheel FILE.whl"
  fi

  # --- 4. fairseq, built for the target Python ----------------------------------------------------------
  rm -f "$out"/fairseq-*.whl
  if [ -n "$target_python" ]; then
    local fairseq
    fairseq=$(fairseq_wheel "$target_python" "${SSL_MI_WHEELHOUSE:-$HOME/.cache/ssl-mi/wheels}") \
      || wh_die "building the fairseq $FAIRSEQ_VERSION wheel with $target_python failed (see above)"
    cp "$fairseq" "$out/"
  fi

  # --- 5. what the node installs, and the installer itself -------------------------------------------
  # requirements.txt pins every wheel of this download (fairseq and ssl_mi_callback are installed
  # separately); wheels left in OUT_DIR by an earlier build with other settings are removed.
  "$tool" - "$out" "$python_version" "$extras" "$glibc" "$work/download.log" <<'EOF'
import json, re, sys
from pathlib import Path
out, python_version, extras, glibc, log = sys.argv[1:]
resolved = set(re.findall(r"^(?:Saved|File was already downloaded) (.+\.whl)$", Path(log).read_text(), re.M))
resolved = {Path(path).name for path in resolved}
pins = []
for wheel in sorted(Path(out).glob("*.whl")):
    dist, version = wheel.name.split("-")[:2]
    if dist.lower() in ("fairseq", "ssl_mi_callback"):
        continue
    if wheel.name not in resolved:
        wheel.unlink()
        continue
    pins.append(f"{dist}=={version}")
Path(out, "requirements.txt").write_text("\n".join(pins) + "\n")
wheels = sorted(p.name for p in Path(out).glob("*.whl"))
own = next(n for n in wheels if n.startswith("ssl_mi_callback-"))
manifest = {
    "python_version": python_version, "platform": f"manylinux glibc <= {glibc}, x86_64",
    "extras": [e for e in extras.split(",") if e], "ssl_mi_callback": own.split("-")[1],
    "fairseq": next((n for n in wheels if n.startswith("fairseq-")), None), "wheels": wheels,
}
Path(out, "wheelhouse.json").write_text(json.dumps(manifest, indent=1) + "\n")
EOF
  cp "$root/scripts/install_offline.sh" "$out/install_offline.sh"
  local count size
  count=$(ls "$out"/*.whl | wc -l)
  size=$(du -sh "$out" | cut -f1)
  wh_say "wheelhouse ready: $out ($count wheels, $size); on the node: $out/install_offline.sh $out [VENV]"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  build_wheelhouse_main "$@"
fi
