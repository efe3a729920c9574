#!/usr/bin/env bash
# The main job on the embedded default: a local env server on the sample tasks, every task played over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m envserver demo "$@"
