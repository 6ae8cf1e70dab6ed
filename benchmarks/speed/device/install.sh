#!/usr/bin/env bash
# Make fairseq importable on the offline GPU machine, from the .device/ folder that
# benchmarks/speed/device/prepare.sh made. Run THERE, from the repo root, with a CPython 3.12 python3
# that already has torch, torchaudio, numpy and scikit-learn:
#
#   source benchmarks/speed/device/install.sh      # also exports PYTHONPATH in this shell
#   # or: bash benchmarks/speed/device/install.sh && export PYTHONPATH=/tmp/ssl_mi_site:$PWD${PYTHONPATH:+:$PYTHONPATH}
#
# Steps: the wheels .device/wheels/*.whl unpacked into $SSL_MI_SITE (what `pip install --no-deps
# --target` does for them: none has scripts to generate; not pip itself, because pip >= 24.1 refuses
# omegaconf 2.0.6's metadata; SSL_MI_SITE defaults to /tmp/ssl_mi_site; skipped when that folder
# already holds exactly these wheels), PYTHONPATH=$SSL_MI_SITE:$PWD first, line 1 (the root) of every fairseq manifest in
# .device/corpus/*.tsv set to the absolute path of .device/corpus here (whatever it was before: the
# @SSL_MI_DEVICE_CORPUS@ placeholder or an earlier path, so reruns and copies elsewhere are fine), then
#   python3 -c "import ssl_mi_callback.integrations.fairseq; import fairseq;
#               from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model"
# (our fairseq compatibility patches for Python 3.11/3.12 must be imported before fairseq).
# Any failure prints one line starting with "install.sh: error:" and returns (sourced) or exits
# non-zero. Environment: SSL_MI_PYTHON (default python3), SSL_MI_SITE (default /tmp/ssl_mi_site),
# SSL_MI_SKIP_CHECK=1 skips the import check.

_ssl_mi_device_install() {
  local py=${SSL_MI_PYTHON:-python3} site=${SSL_MI_SITE:-/tmp/ssl_mi_site} root=$PWD
  _ssl_mi_err() { printf 'install.sh: error: %s\n' "$*" >&2; }

  if [ ! -d "$root/ssl_mi_callback" ] || [ ! -d "$root/.device/wheels" ]; then
    _ssl_mi_err "run from the repo root, where .device/wheels (made by benchmarks/speed/device/prepare.sh) is; here is $root"
    return 2
  fi
  if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    _ssl_mi_err "$py is not CPython 3.12 (the wheels in .device/wheels are cp312): set SSL_MI_PYTHON"
    return 2
  fi
  local wheels=("$root"/.device/wheels/*.whl)
  if [ ! -f "${wheels[0]}" ]; then
    _ssl_mi_err "no wheels in .device/wheels: run benchmarks/speed/device/prepare.sh on the preparing machine"
    return 2
  fi

  # 1. the wheels, into their own folder (reinstalled only when the set of wheels changed)
  local stamp=$site/.ssl_mi_device_wheels want
  want=$(cd "$root/.device/wheels" && ls -1 ./*.whl | sed 's|^\./||')
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    printf '[device] wheels already installed in %s\n' "$site" >&2
  else
    if [ -d "$site" ] && [ -n "$(ls -A "$site")" ] && [ ! -f "$site/.ssl_mi_device_site" ]; then
      _ssl_mi_err "$site exists and was not made by this script: remove it or set SSL_MI_SITE"
      return 2
    fi
    rm -rf "$site" && mkdir -p "$site" && : >"$site/.ssl_mi_device_site" \
      || { _ssl_mi_err "cannot create $site"; return 1; }
    if ! "$py" - "$site" "${wheels[@]}" >&2 <<'EOF'
import re, sys, zipfile
from pathlib import Path
site = Path(sys.argv[1])
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            data = re.match(r"[^/]+\.data/([^/]+)/(.*)", name)
            if name.endswith("/") or (data and data.group(1) not in ("purelib", "platlib")):
                continue  # folders; scripts, headers and data files are not needed for the imports
            target = site / (data.group(2) if data else name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
EOF
    then
      _ssl_mi_err "unpacking .device/wheels/*.whl into $site failed (see above)"
      return 1
    fi
    printf '%s\n' "$want" >"$stamp"
    printf '[device] installed %s wheels into %s\n' "${#wheels[@]}" "$site" >&2
  fi

  # 2. the import path: the wheels, then this source tree
  case ":${PYTHONPATH:-}:" in
    *":$site:$root:"*) ;;
    *) export PYTHONPATH=$site:$root${PYTHONPATH:+:$PYTHONPATH} ;;
  esac

  # 3. the manifests' root line: the absolute path of .device/corpus on this machine
  if [ -d "$root/.device/corpus" ]; then
    if ! "$py" - "$root/.device/corpus" <<'EOF'
import re, sys
from pathlib import Path
corpus = Path(sys.argv[1]).resolve()
entry = re.compile(r"^[^\t]+\t\d+$")
count = 0
for manifest in sorted(corpus.glob("*.tsv")):
    lines = manifest.read_text().splitlines()
    if not lines or "\t" in lines[0] or not all(entry.match(l) for l in lines[1:] if l.strip()):
        continue  # not a fairseq manifest (e.g. utterances.tsv)
    if lines[0] != str(corpus):
        lines[0] = str(corpus)
        manifest.write_text("\n".join(lines) + "\n")
    count += 1
print(f"[device] {count} manifests in {corpus} have the root {corpus}", file=sys.stderr)
EOF
    then
      _ssl_mi_err "rewriting the root lines of .device/corpus/*.tsv failed (see above)"
      return 1
    fi
  fi

  # 4. the check
  if [ "${SSL_MI_SKIP_CHECK:-0}" != 1 ]; then
    local out
    if ! out=$("$py" -c "import ssl_mi_callback.integrations.fairseq; import fairseq; from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model" 2>&1); then
      printf '%s\n' "$out" | tail -n 15 >&2
      _ssl_mi_err "the fairseq import check failed: $(printf '%s\n' "$out" | tail -n 1)"
      return 1
    fi
    printf '[device] fairseq imports (PYTHONPATH=%s)\n' "$PYTHONPATH" >&2
  fi
  return 0
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  _ssl_mi_device_install "$@" && _ssl_mi_rc=0 || _ssl_mi_rc=$?
  unset -f _ssl_mi_device_install _ssl_mi_err
  eval "unset _ssl_mi_rc; return $_ssl_mi_rc"
else
  _ssl_mi_device_install "$@" || exit $?
  printf 'export PYTHONPATH=%s\n' "$PYTHONPATH"
fi
