#!/usr/bin/env bash
# Create (idempotently) the virtual environment holding the reference editor, openhands-aci 0.3.3, for
# tests/conformance/test_editor_conformance.py.
#
#   tests/conformance/setup_aci_venv.sh            # -> .venv-aci/ at the repository root
#   ACI_VENV=/some/dir tests/conformance/setup_aci_venv.sh
#   ACI_PYTHON=/path/to/python3.12 tests/conformance/setup_aci_venv.sh
#
# openhands-aci 0.3.3 requires Python >= 3.12. Interpreter: $ACI_PYTHON if set, else the first of python3.12,
# python3.13, pyenv's 3.12.x / 3.13.x. Failing those (or with ACI_PYTHON a 3.11), python3.11 is used: the
# dependencies are installed first, then openhands-aci itself with --no-deps --ignore-requires-python
# (it works on 3.11).
#
# chardet is pinned to 5.2.0, the version OpenHands' runtime shipped alongside openhands-aci 0.3.x:
# with chardet >= 6, binaryornot 0.4.4 (openhands-aci's binary-file check) raises NameError on binary files.
#
# Exit status 0 when the venv is ready (prints its python's path on the last line), non-zero otherwise.
set -euo pipefail

ACI_VERSION="0.3.3"
CHARDET_VERSION="5.2.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ACI_VENV:-$ROOT/.venv-aci}"
PY="$VENV/bin/python"

ready() {
    [ -x "$PY" ] && "$PY" - "$ACI_VERSION" "$CHARDET_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("openhands-aci") == sys.argv[1], version("openhands-aci")
assert version("chardet") == sys.argv[2], version("chardet")
import openhands_aci.editor  # noqa: F401
EOF
}

if ready; then
    echo "$PY"
    exit 0
fi

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }

candidates=(python3.12 python3.13)
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
for d in "$PYENV_ROOT"/versions/3.12* "$PYENV_ROOT"/versions/3.13* /root/.pyenv/versions/3.12* /root/.pyenv/versions/3.13*; do
    [ -x "$d/bin/python3" ] && candidates+=("$d/bin/python3")
done

BASE=""
FALLBACK=0
if [ -n "${ACI_PYTHON:-}" ]; then  # explicit choice; a 3.11 one gets the --no-deps route
    BASE="$(command -v "$ACI_PYTHON" || true)"
    case "$(py_version "$BASE")" in
        3.1[2-9]) ;;
        3.11) FALLBACK=1 ;;
        *) echo "setup_aci_venv: ACI_PYTHON=$ACI_PYTHON is not Python 3.11+" >&2; exit 1 ;;
    esac
fi
for c in "${candidates[@]}"; do
    [ -z "$BASE" ] || break
    exe="$(command -v "$c" 2>/dev/null || true)"
    [ -n "$exe" ] || continue
    case "$(py_version "$exe")" in
        3.1[2-9]) BASE="$exe"; break ;;
    esac
done
if [ -z "$BASE" ]; then
    for c in python3.11 "$PYENV_ROOT"/versions/3.11*/bin/python3 python3; do
        exe="$(command -v "$c" 2>/dev/null || true)"
        [ -n "$exe" ] || continue
        if [ "$(py_version "$exe")" = "3.11" ]; then BASE="$exe"; FALLBACK=1; break; fi
    done
fi
if [ -z "$BASE" ]; then
    echo "setup_aci_venv: no Python 3.12+ (or 3.11) interpreter found; set ACI_PYTHON" >&2
    exit 1
fi
echo "setup_aci_venv: building $VENV with $BASE ($(py_version "$BASE"))" >&2

rm -rf "$VENV"
"$BASE" -m venv "$VENV"
PIP=("$PY" -m pip install --disable-pip-version-check --quiet)

if [ "$FALLBACK" = 0 ]; then
    "${PIP[@]}" "openhands-aci==$ACI_VERSION" "chardet==$CHARDET_VERSION"
else
    # openhands-aci 0.3.3's requirements (Requires-Dist, no extras), then the package itself.
    "${PIP[@]}" "chardet==$CHARDET_VERSION" \
        "beautifulsoup4>=4.12.3" "binaryornot>=0.4.4,<0.5.0" "cachetools>=5.5.2,<6.0.0" \
        "charset-normalizer>=3.4.1,<4.0.0" flake8 gitpython "grep-ast>=0.9.0,<0.10.0" "libcst==1.5.0" \
        "mammoth>=1.8.0" "markdownify>=0.13.1" "matplotlib>=3.10.3,<4.0.0" "networkx>=3.4.2,<4.0.0" \
        "openpyxl>=3.1.5,<4.0.0" pandas "pdfminer-six>=20240706" "puremagic>=1.28" \
        "pydantic>=2.11.3,<3.0.0" "pydub>=0.25.1,<0.26.0" "pypdf>=5.1.0" "python-pptx>=1.0.2,<2.0.0" \
        "rapidfuzz>=3.13.0,<4.0.0" "requests>=2.32.3" "speechrecognition>=3.14.1,<4.0.0" \
        "tree-sitter>=0.24.0,<0.25.0" "tree-sitter-language-pack==0.7.3" "whatthepatch>=1.0.6,<2.0.0" \
        "xlrd>=2.0.1,<3.0.0" "youtube-transcript-api>=0.6.2"
    "${PIP[@]}" --no-deps --ignore-requires-python "openhands-aci==$ACI_VERSION"
fi

if ! ready; then
    echo "setup_aci_venv: $VENV was built but openhands-aci $ACI_VERSION does not import" >&2
    exit 1
fi
echo "$PY"
