#!/usr/bin/env bash
# Set up (or refresh) the development environment in ./.venv. Idempotent: a second run that
# finds everything in place takes a couple of seconds.
#
#   scripts/setup_env.sh            # create/refresh .venv from requirements/dev-lock.txt
#   scripts/setup_env.sh --relock   # resolve requirements/dev.in anew and rewrite the lock
#
# Environment: PYTHON (interpreter for the venv, default python3.11 or python3),
# SSL_MI_WHEELHOUSE (cache for the built fairseq wheel, default ~/.cache/ssl-mi/wheels),
# SSL_MI_SKIP_APT=1 (never call apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
relock=0
[ "${1:-}" = "--relock" ] && relock=1

say() { printf '[setup] %s\n' "$*" >&2; }

# --- 1. system speech tools (espeak-ng, flite) -------------------------------------------
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v flite >/dev/null 2>&1 || missing+=(flite)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${SSL_MI_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo="sudo -n"; }
    if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
      say "installing ${missing[*]} with apt-get"
      $sudo apt-get update -qq >/dev/null || say "apt-get update failed"
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq espeak-ng flite >/dev/null \
        || say "apt-get install espeak-ng flite failed: speech-generation tests will be skipped"
    else
      say "espeak-ng/flite missing and no root: run 'sudo apt-get install espeak-ng flite'"
    fi
  else
    say "espeak-ng/flite missing: install them (Debian: apt-get install espeak-ng flite)"
  fi
fi

# --- 2. the virtual environment -------------------------------------------------------------
py=${PYTHON:-}
if [ -z "$py" ]; then
  if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
fi
venv="$root/.venv"
lock="$root/requirements/dev-lock.txt"
stamp="$venv/.ssl-mi-stamp"
want=$( { cat "$lock" requirements/dev.in setup.cfg pyproject.toml scripts/setup_env.sh scripts/build_wheelhouse.sh 2>/dev/null || true; } | sha256sum | cut -c1-16)
if [ $relock = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  say "environment up to date ($venv)"
  exit 0
fi
[ -x "$venv/bin/python" ] || { say "creating $venv with $py"; "$py" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# fairseq 0.12.2 pins omegaconf 2.0.6, whose metadata pip >= 24.1 rejects.
"${pip[@]}" install 'pip<24.1' 'setuptools>=61,<81' 'wheel<1'
if [ $relock = 1 ] || [ ! -f "$lock" ]; then
  say "resolving requirements/dev.in (this downloads torch: a few minutes)"
  "${pip[@]}" install -r requirements/dev.in
  { echo "# Exact development set, written by scripts/setup_env.sh --relock. Do not edit by hand."
    "$venv/bin/python" -m pip freeze --exclude-editable | grep -vE '^(fairseq|ssl[-_]mi[-_]callback) ?[=@]' ; } > "$lock"
else
  say "installing the locked development set"
  "${pip[@]}" install -r "$lock"
fi

# --- 3. fairseq 0.12.2 (no deps; built once into a wheel cache, shared with build_wheelhouse.sh) --
source "$root/scripts/build_wheelhouse.sh"   # defines fairseq_wheel; runs nothing when sourced
wheels=${SSL_MI_WHEELHOUSE:-$HOME/.cache/ssl-mi/wheels}
mkdir -p "$wheels"
fairseq_whl=$(fairseq_wheel "$venv/bin/python" "$wheels") || { say "building the fairseq wheel failed"; exit 1; }
"${pip[@]}" install --no-deps "$fairseq_whl"

# --- 4. this package, editable ------------------------------------------------------------------
"${pip[@]}" install --no-deps --no-build-isolation -e .
"$venv/bin/python" -c "import ssl_mi_callback" 
echo "$want" > "$stamp"
say "environment ready: $venv"
