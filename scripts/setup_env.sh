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
#
# Missing Debian/Ubuntu packages are installed with one apt-get call (as root or with password-less
# sudo): espeak-ng, flite and make always (a warning when that is not possible), and when it has to
# (re)install: python3.X-venv for a new .venv, build-essential and python3.X-dev for the fairseq build
# (an error naming them when that is not possible).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
relock=0
[ "${1:-}" = "--relock" ] && relock=1

say() { printf '[setup] %s\n' "$*" >&2; }

die() { printf 'setup_env.sh: error: %s\n' "$*" >&2; exit 1; }

# --- 1. what this run needs -------------------------------------------------------------------
py=${PYTHON:-}
if [ -z "$py" ]; then
  if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
fi
venv="$root/.venv"
lock="$root/requirements/dev-lock.txt"
stamp="$venv/.ssl-mi-stamp"
want=$( { cat "$lock" requirements/dev.in setup.cfg pyproject.toml scripts/setup_env.sh scripts/build_wheelhouse.sh 2>/dev/null || true; } | sha256sum | cut -c1-16)
up_to_date=0
if [ $relock = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  up_to_date=1
fi
source "$root/scripts/build_wheelhouse.sh"   # defines fairseq_wheel, python_tag; runs nothing when sourced
wheels=${SSL_MI_WHEELHOUSE:-$HOME/.cache/ssl-mi/wheels}

# Debian/Ubuntu packages. required: this run cannot go on without them (checked only when it will
# (re)install: the interpreter, its venv module (Debian ships ensurepip apart) when .venv is new, a C/C++
# compiler and the Python headers when the fairseq wheel is not cached yet, since its extensions are
# built from the sdist). optional: espeak-ng and flite (speech-generation tests skip without them; CI
# fails) and make (the README's `make test` / `make demo`).
required=()
optional=()
command -v espeak-ng >/dev/null 2>&1 || optional+=(espeak-ng)
command -v flite >/dev/null 2>&1 || optional+=(flite)
command -v make >/dev/null 2>&1 || optional+=(make)
if [ $up_to_date = 0 ]; then
  if ! command -v "$py" >/dev/null 2>&1; then
    [ -z "${PYTHON:-}" ] || die "PYTHON=$PYTHON: no such interpreter (unset PYTHON to use python3.11 or python3)"
    required+=(python3 python3-venv python3-dev)  # Debian 12's python3 is 3.11
    { command -v gcc && command -v g++; } >/dev/null 2>&1 || required+=(build-essential)
  else
    pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ ! -x "$venv/bin/python" ] && ! "$py" -c 'import ensurepip' >/dev/null 2>&1; then
      required+=("python$pyver-venv")
    fi
    tag=$(python_tag "$py")
    if ! compgen -G "$wheels/$tag/fairseq-$FAIRSEQ_VERSION-$tag-$tag-*.whl" >/dev/null \
       && ! compgen -G "$wheels/fairseq-$FAIRSEQ_VERSION-$tag-$tag-*.whl" >/dev/null; then
      { command -v gcc && command -v g++; } >/dev/null 2>&1 || required+=(build-essential)
      "$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || required+=("python$pyver-dev")
    fi
  fi
fi

# --- 2. install them with apt-get in one step (root, or sudo without a password) -----------------
# apt_install PACKAGE...: 0 when apt-get installed them all, 1 when apt-get failed, 2 when it cannot
# be used here (SSL_MI_SKIP_APT=1, no apt-get, neither root nor password-less sudo); says why.
apt_updated=0
apt_install() {
  local sudo=""
  [ "${SSL_MI_SKIP_APT:-0}" != 1 ] || { say "SSL_MI_SKIP_APT=1: not calling apt-get for $*"; return 2; }
  command -v apt-get >/dev/null 2>&1 || { say "no apt-get here to install $*"; return 2; }
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
      || { say "neither root nor password-less sudo: cannot apt-get install $*"; return 2; }
    sudo="sudo -n"
  fi
  say "installing $* with apt-get"
  if [ $apt_updated = 0 ]; then
    $sudo apt-get update -qq >/dev/null || say "apt-get update failed"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null \
    || { say "apt-get install $* failed"; return 1; }
}
wanted=(${required[@]+"${required[@]}"} ${optional[@]+"${optional[@]}"})
apt_status=0
[ ${#wanted[@]} = 0 ] || apt_install "${wanted[@]}" || apt_status=$?
if [ $apt_status != 0 ]; then
  left=()  # what is still missing
  if [ $apt_status = 1 ] && [ ${#wanted[@]} -gt 1 ]; then
    # one package apt-get cannot install fails the whole call: then the required ones together, each optional alone
    if [ ${#required[@]} -gt 0 ] && ! apt_install "${required[@]}"; then left+=("${required[@]}"); fi
    for package in ${optional[@]+"${optional[@]}"}; do apt_install "$package" || left+=("$package"); done
  else
    left=("${wanted[@]}")
  fi
  missing_required=()
  for package in ${left[@]+"${left[@]}"}; do
    case " ${required[*]-} " in
      *" $package "*) missing_required+=("$package") ;;
      *) case $package in
           make) say "make missing: 'make test' and 'make demo' need it (sudo apt-get install make)" ;;
           *) say "$package missing: speech-generation tests will be skipped (sudo apt-get install $package)" ;;
         esac ;;
    esac
  done
  [ ${#missing_required[@]} = 0 ] || die "missing ${missing_required[*]} (Debian/Ubuntu packages): run" \
    "'sudo apt-get install ${missing_required[*]}', then this script again"
fi

# --- 3. the virtual environment -------------------------------------------------------------
if [ $up_to_date = 1 ]; then
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

# --- 4. fairseq 0.12.2 (no deps; built once into a wheel cache, shared with build_wheelhouse.sh) --
mkdir -p "$wheels"
fairseq_whl=$(fairseq_wheel "$venv/bin/python" "$wheels") || { say "building the fairseq wheel failed"; exit 1; }
"${pip[@]}" install --no-deps "$fairseq_whl"

# --- 5. this package, editable ------------------------------------------------------------------
"${pip[@]}" install --no-deps --no-build-isolation -e .
"$venv/bin/python" -c "import ssl_mi_callback" 
echo "$want" > "$stamp"
say "environment ready: $venv"
