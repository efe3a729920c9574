#!/usr/bin/env bash
# The project's test command: installs what it needs (scripts/setup.sh), then runs the whole suite against a real
# Docker engine. Extra arguments go to pytest.
#
#   bash scripts/test.sh           the whole suite (~22 min on 2 cores, Docker and the reference venvs included)
#   bash scripts/test.sh --fast    the fast tier: -m "not docker and not slow" (unit, agent, trainer tests; ~2.5 min),
#                                  no Docker engine, no images, no conformance venvs
#
# Tiers are markers (pyproject.toml): tests/conftest.py marks `docker` every test that uses the docker_engine fixture
# (directly or through sample_images, server, ...) and `slow` those using a fixture in its SLOW_FIXTURES; heavy
# tests carry @pytest.mark.slow themselves. A later `-m` among the extra arguments overrides the fast tier's.
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=
ARGS=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then FAST=1; else ARGS+=("$arg"); fi
done
if [ -n "$FAST" ]; then
  SETUP_NO_DOCKER=1 bash scripts/setup.sh
  exec .venv/bin/python -m pytest -p no:cacheprovider -m "not docker and not slow" ${ARGS[@]+"${ARGS[@]}"}
fi
bash scripts/setup.sh
# The editor conformance reference (openhands-aci) lives in its own venv; its absence skips that test with a reason.
bash tests/conformance/setup_aci_venv.sh || echo "[test] could not build the openhands-aci venv; conformance will be skipped"
bash tests/conformance/setup_swebench4_venv.sh || echo "[test] could not build the swebench 4.1.0 venv; the eval-script oracle will be skipped (fails under CI)"
exec .venv/bin/python -m pytest -p no:cacheprovider ${ARGS[@]+"${ARGS[@]}"}
