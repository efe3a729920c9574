#!/usr/bin/env bash
# The project's static checks (issue 19): `ruff check`, `ruff format --check` and `mypy` (its files and settings are
# in pyproject.toml), all from .venv; scripts/setup.sh makes it first (the venv only: no Docker) when it is missing
# or lacks the tools (they come with the `test` extra). Every check runs; exits non-zero when any found something
# and names which.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
  SETUP_NO_DOCKER=1 bash scripts/setup.sh || { echo "[lint] scripts/setup.sh failed" >&2; exit 1; }
fi

failed=()
check() {
  local name=$1
  shift
  printf '\033[1m[lint] %s\033[0m\n' "$name"
  "$@" || failed+=("$name")
}
check "ruff check" .venv/bin/ruff check .
check "ruff format --check" .venv/bin/ruff format --check .
check "mypy" .venv/bin/mypy

if [ ${#failed[@]} -gt 0 ]; then
  for name in "${failed[@]}"; do echo "[lint] FAILED: $name" >&2; done
  exit 1
fi
echo "[lint] all checks passed"
