#!/usr/bin/env bash
# The main job on the embedded default. `bash scripts/run.sh` — a local env server on the sample tasks, every task
# played over HTTP; `bash scripts/run.sh train [ARGS]` — `python -m trainer.run` on its embedded default (tiny model,
# local env server, sample tasks, CPU; ARGS go to trainer.run, e.g. --steps 10 --output-dir runs/try).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ "${1:-}" == "train" ]]; then
    shift
    exec .venv/bin/python -m trainer.run "$@"
fi
exec .venv/bin/python -m envserver demo "$@"
