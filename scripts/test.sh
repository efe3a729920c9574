#!/usr/bin/env bash
# The project's test command: installs what it needs (scripts/setup.sh), then runs the whole suite against a real
# Docker engine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The editor conformance reference (openhands-aci) lives in its own venv; its absence skips that test with a reason.
bash tests/conformance/setup_aci_venv.sh || echo "[test] could not build the openhands-aci venv; conformance will be skipped"
bash tests/conformance/setup_swebench4_venv.sh || echo "[test] could not build the swebench 4.1.0 venv; the eval-script oracle will be skipped (fails under CI)"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
