#!/usr/bin/env bash
# Install ssl_mi_callback from a wheelhouse made by scripts/build_wheelhouse.sh, without any network:
# every pip call runs with --no-index --find-links WHEELHOUSE, and pip's config files and PIP_*
# index settings of this shell are ignored, so nothing but the wheelhouse is looked at.
#
#   install_offline.sh WHEELHOUSE [VENV]
#
# VENV (default ./.venv) is created when missing, with PYTHON (default: pythonX.Y of the
# wheelhouse's Python version, else python3 if it is that version); an existing VENV must have the
# wheelhouse's Python version. Order: pip < 24.1 (omegaconf 2.0.6's metadata), the pinned set of
# WHEELHOUSE/requirements.txt, fairseq with --no-deps (as scripts/setup_env.sh does: its metadata
# asks for torchaudio, which wav2vec 2.0/HuBERT do not need), then ssl_mi_callback; last, an import check.
set -euo pipefail

say() { printf '[install] %s\n' "$*" >&2; }
die() { printf 'install_offline.sh: error: %s\n' "$*" >&2; exit 2; }

case "${1:-}" in -h|--help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: install_offline.sh WHEELHOUSE [VENV]"
[ -d "$1" ] || die "no such wheelhouse folder: $1"
wheelhouse=$(cd "$1" && pwd)
manifest=$wheelhouse/wheelhouse.json
[ -f "$manifest" ] && [ -f "$wheelhouse/requirements.txt" ] \
  || die "$1 is not a wheelhouse (no wheelhouse.json/requirements.txt): make one with scripts/build_wheelhouse.sh"
version=$(sed -n 's/.*"python_version": *"\([0-9.]*\)".*/\1/p' "$manifest")
[ -n "$version" ] || die "$manifest names no python_version: rebuild the wheelhouse"
venv=${2:-.venv}

# Nothing but the wheelhouse: no index, no config file (it may add find-links or an index), no proxy use.
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL

python_version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

if [ ! -x "$venv/bin/python" ]; then
  py=${PYTHON:-}
  if [ -z "$py" ]; then
    for candidate in "python$version" python3; do
      if [ "$(python_version_of "$candidate")" = "$version" ]; then py=$candidate; break; fi
    done
  fi
  [ -n "$py" ] || die "the wheelhouse is for Python $version and no python$version was found: install it or set PYTHON=/path/to/python$version"
  [ "$(python_version_of "$py")" = "$version" ] || die "PYTHON=$py is not Python $version, the wheelhouse's version"
  say "creating $venv with $py"
  "$py" -m venv "$venv" || die "'$py -m venv' failed: install the venv module (Debian: apt-get install python$version-venv)"
fi
have=$(python_version_of "$venv/bin/python")
[ "$have" = "$version" ] || die "$venv has Python $have but the wheelhouse is for Python $version: give another VENV or build a wheelhouse with --python-version $have"

pip=("$venv/bin/python" -m pip -q install --no-index --find-links "$wheelhouse")
"${pip[@]}" 'pip<24.1'
say "installing $(wc -l < "$wheelhouse/requirements.txt") pinned packages"
"${pip[@]}" -r "$wheelhouse/requirements.txt"
fairseq_wheels=("$wheelhouse"/fairseq-*.whl)
if [ -f "${fairseq_wheels[0]}" ]; then
  "${pip[@]}" --no-deps "${fairseq_wheels[@]}"
fi
own_wheels=("$wheelhouse"/ssl_mi_callback-*.whl)
[ -f "${own_wheels[0]}" ] || die "the wheelhouse has no ssl_mi_callback wheel: rebuild it"
"${pip[@]}" "${own_wheels[@]}"

check="import ssl_mi_callback"
[ -f "${fairseq_wheels[0]}" ] && check="import ssl_mi_callback.integrations.fairseq, fairseq"
"$venv/bin/python" -c "$check" || die "installed, but '$check' fails in $venv (see above)"
say "installed into $venv: run $venv/bin/ssl-mi or $venv/bin/ssl-mi-fairseq-hydra-train"
