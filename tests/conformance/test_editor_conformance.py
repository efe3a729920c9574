"""Conformance: our in-container editor (envserver/runtime/editor.py) against openhands-aci 0.3.3.

Reference. The target is the text an OpenHands agent sees as the `str_replace_editor` observation. That is
`openhands_aci.editor.file_editor(...)`'s `formatted_output_and_error`: the success text, or
"ERROR:\\n" + the error text. (`file_editor` returns it inside `<oh_aci_output_UUID>` markers, as JSON
next to the raw `output`/`error` fields; the driver unwraps it.) OpenHands' runtime
(`action_execution_server._execute_file_editor`) builds the same string from `OHEditor.__call__`'s result,
and around the call it converts a string `insert_line` with int() and turns a TypeError into
"ERROR:\\n<message>"; the driver applies those two rules too. `error` is True when openhands-aci's
result has an error. The workspace_root scenario uses an `OHEditor(workspace_root=...)` instance (as
OpenHands' runtime may) with the same formatting, for the "Maybe you meant ...?" suggestion.

Method. tests/conformance/editor_driver.py runs the scripted scenarios of editor_scenarios.py, fixtures
interleaved with editor calls (~190 calls, errors included), once with the real openhands-aci (in the
venv built by setup_aci_venv.sh) and once per interpreter with our editor: the host python and, when
present, python3.8 (the oldest python3 our runtime must run on). Every run uses the SAME absolute
directory (wiped in between), so paths inside messages agree. Per call we compare output and error flag
byte for byte, and the scenario directory afterwards (each entry's type, size and sha256).

Excluded, because they depend on the environment or are not deterministic: linting (`enable_linting`
stays off, as in OpenHands) and the Markdown conversion of .pdf/.docx/.xlsx/.pptx/audio files (we
return openhands-aci's conversion-error text; see tests/unit/test_editor.py); non-UTF-8 legacy
encodings, where openhands-aci's charset_normalizer guesses (we use latin-1; unit-tested); file modes.
Steps marked `deviation` in editor_scenarios.py are intentional differences, checked against our
exact expected output instead.

The directory listing runs `find ... | sort` in both implementations, so it depends on the locale's
collation: both sides run in this same environment.

If the openhands-aci venv cannot be built (no Python >= 3.11, no package index), the tests skip.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from editor_scenarios import SCENARIOS, op_steps

from tests.conftest import find_python38, unavailable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNTIME_DIR = REPO / "envserver" / "runtime"
DRIVER = HERE / "editor_driver.py"
SETUP_SCRIPT = HERE / "setup_aci_venv.sh"
IMPLS = {"ours-host": sys.executable, "ours-py38": "python3.8", "ours-container": "docker"}
"""ours-py38 runs whichever Python 3.8 tests/conftest.py's find_python38 finds ($EDITOR_CONFORMANCE_PY38 first)."""
CONTAINER_IMAGE = os.environ.get("EDITOR_CONFORMANCE_IMAGE", "envserver/base:bookworm")
"""Our editor also runs where it really runs: inside a task image, with that image's own python3."""


def _container_argv(root: Path) -> list:
    """`docker run` of the driver in a base-image container; the scenario root is bind-mounted at the same path."""
    return [
        "docker",
        "run",
        "--rm",
        "-i",
        "--network",
        "none",
        "-v",
        f"{root.parent}:{root.parent}",
        "-v",
        f"{RUNTIME_DIR}:/rt:ro",
        "-v",
        f"{HERE}:/conf:ro",
        CONTAINER_IMAGE,
        "python3",
        "/conf/editor_driver.py",
        "ours",
    ]


def _container_available() -> bool:
    try:
        return (
            subprocess.run(
                ["docker", "image", "inspect", CONTAINER_IMAGE], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


STEPS = list(op_steps())


def _aci_python() -> str:
    env = dict(os.environ)
    env.setdefault("ACI_VENV", str(REPO / ".venv-aci"))
    try:
        proc = subprocess.run(
            ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, env=env, timeout=1800, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"openhands-aci venv could not be built: {e}")
    if proc.returncode != 0:
        pytest.skip(
            f"openhands-aci venv could not be built (tests/conformance/setup_aci_venv.sh exited {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout.strip().splitlines()[-1]


def _run_driver(python: str, impl: str, root: Path) -> dict:
    in_container = python == "docker"
    spec = {"root": str(root), "runtime_dir": "/rt" if in_container else str(RUNTIME_DIR), "scenarios": SCENARIOS}
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        _container_argv(root) if in_container else [python, str(DRIVER), impl],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"driver {impl} ({python}) failed with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    aci_python = _aci_python()
    root = tmp_path_factory.mktemp("editor-conformance") / "ws"
    results = {"aci": _run_driver(aci_python, "aci", root)}
    for label, python in IMPLS.items():
        if label == "ours-py38":
            python = find_python38()
            if python is None:
                continue
        if label == "ours-container":
            if not _container_available():
                continue
            root.mkdir(parents=True, exist_ok=True)
        results[label] = _run_driver(python, "ours", root)
    return root, results


def _diff(expected: str, got: str) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "openhands-aci", "ours", n=2))


def _check_output(ref: dict, got: dict, what: str) -> None:
    assert got["output"] == ref["output"], (
        f"{what}: output differs\n{_diff(ref['output'], got['output'])}\n"
        f"expected: {ref['output'][:3000]!r}\ngot:      {got['output'][:3000]!r}"
    )
    assert got["error"] == ref["error"], f"{what}: error flag {got['error']!r}, expected {ref['error']!r}"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "impl",
    [pytest.param(impl, marks=[pytest.mark.docker] if python == "docker" else []) for impl, python in IMPLS.items()],
)
@pytest.mark.parametrize("scenario,step", STEPS, ids=[f"{name}/{step['id']}" for name, step in STEPS])
def test_matches_openhands_aci(runs, impl, scenario, step):
    root, results = runs
    if impl not in results:
        if impl == "ours-container":
            unavailable(f"no Docker engine or no {CONTAINER_IMAGE} image (python -m images base)")
        unavailable("no Python 3.8 interpreter found (install one, or set PYTHON38 or EDITOR_CONFORMANCE_PY38)")
    if results["aci"]["python"] < step.get("reference_python", [3, 0]):
        have, need = results["aci"]["python"], step["reference_python"]
        pytest.skip(f"the openhands-aci venv runs Python {have[0]}.{have[1]}; this reference needs {need[0]}.{need[1]}")
    key = f"{scenario}/{step['id']}"
    ref = results["aci"]["results"][key]
    got = results[impl]["results"][key]
    assert "crash" not in got, f"our editor raised: {got['crash']}"

    if step.get("deviation"):
        expect = step["expect"]
        if expect is not None:  # our own exact output; openhands-aci's is shown for context
            ws = str(root / scenario)
            expect = {"output": expect["output"].replace("{ws}", ws), "error": expect["error"]}
            _check_output(expect, got, f"deviation ({step['deviation']}); openhands-aci says {ref!r}")
            assert got["state"] == ref["state"], "file-system state differs"
        else:  # same output, different file-system state by design
            _check_output(ref, got, key)
        return

    assert "crash" not in ref, (
        f"openhands-aci itself crashed ({ref['crash']}): mark the step as a deviation with our expected output"
    )
    _check_output(ref, got, key)
    assert got["state"] == ref["state"], (
        f"file-system state after the call differs:\naci:  {ref['state']}\nours: {got['state']}"
    )


def test_enough_operations():
    assert len(STEPS) >= 40
    assert len({f"{n}/{s['id']}" for n, s in STEPS}) == len(STEPS), "step ids must be unique"
