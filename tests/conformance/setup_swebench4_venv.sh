#!/usr/bin/env bash
# Create (idempotently) the virtual environment holding the reference harness, swebench 4.1.0, for
# tests/conformance/test_eval_script_oracle.py.
#
#   tests/conformance/setup_swebench4_venv.sh             # -> .venv-swebench4/ at the repository root
#   SWEBENCH4_VENV=/some/dir tests/conformance/setup_swebench4_venv.sh
#   SWEBENCH4_PYTHON=/path/to/python3.11 tests/conformance/setup_swebench4_venv.sh
#
# swebench 4.1.0 is the last release that ships the per-repository spec tables (MAP_REPO_VERSION_TO_SPECS) and
# builds eval scripts from them; the project's own venv holds swebench 5.x, which dropped them, so the reference
# lives apart. It needs Python >= 3.10: $SWEBENCH4_PYTHON if set, else python3.11, python3.12, python3.10, python3.
# It is installed with its dependencies, because `import swebench` imports the whole harness (docker, datasets,
# modal, ...).
#
# Exit status 0 when the venv is ready (prints its python's path on the last line), non-zero otherwise.
set -euo pipefail

SWEBENCH_VERSION="4.1.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${SWEBENCH4_VENV:-$ROOT/.venv-swebench4}"
PY="$VENV/bin/python"

ready() {
    [ -x "$PY" ] && "$PY" - "$SWEBENCH_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("swebench") == sys.argv[1], version("swebench")
from swebench.harness.test_spec.test_spec import make_test_spec  # noqa: F401
from swebench.harness.log_parsers import MAP_REPO_TO_PARSER  # noqa: F401
EOF
}

if ready; then
    echo "$PY"
    exit 0
fi

py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; }

BASE=""
for c in ${SWEBENCH4_PYTHON:-} python3.11 python3.12 python3.10 python3; do
    exe="$(command -v "$c" 2>/dev/null || true)"
    if [ -n "$exe" ] && py_ok "$exe"; then BASE="$exe"; break; fi
done
if [ -z "$BASE" ]; then
    echo "setup_swebench4_venv: no Python >= 3.10 interpreter found; set SWEBENCH4_PYTHON" >&2
    exit 1
fi
echo "setup_swebench4_venv: building $VENV with $BASE" >&2

rm -rf "$VENV"
"$BASE" -m venv "$VENV"
"$PY" -m pip install --disable-pip-version-check --quiet "swebench==$SWEBENCH_VERSION"

if ! ready; then
    echo "setup_swebench4_venv: $VENV was built but swebench $SWEBENCH_VERSION does not import" >&2
    exit 1
fi
echo "$PY"
