"""envserver/runtime/editor.py (and the runtime files it imports): behaviour the openhands-aci conformance test does
not cover.

(tests/conformance/test_editor_conformance.py compares ~190 scripted calls with openhands-aci itself;
here: our deliberate differences, robustness against garbage arguments, and the module's constraints.)
"""

from __future__ import annotations

import ast
import importlib.util
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "envserver" / "runtime"
EDITOR_PY = RUNTIME_DIR / "editor.py"
EDITOR_FILES = ("editor.py", "editor_files.py", "editor_messages.py", "directory_view.py", "file_encoding.py")
"""The editor and the runtime files it imports (flat, as siblings: the runtime directory is sys.path[0] in the
container)."""


def _load(name: str):
    """A runtime module loaded as the container loads it: with the runtime directory on sys.path for its siblings."""
    spec = importlib.util.spec_from_file_location(f"envserver_runtime_{name}_under_test", RUNTIME_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(RUNTIME_DIR))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RUNTIME_DIR))
    return module


editor = _load("editor")
file_encoding = _load("file_encoding")


@pytest.fixture
def ed():
    return editor.Editor()


def ok(result: dict) -> str:
    assert result["error"] is False, result
    return result["output"]


def err(result: dict) -> str:
    assert result["error"] is True, result
    assert result["output"].startswith("ERROR:\n"), result
    return result["output"][len("ERROR:\n") :]


# --- the module itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EDITOR_FILES)
def test_module_is_stdlib_only(name):
    """Stdlib and sibling runtime files only (the package path is for mypy, under TYPE_CHECKING)."""
    tree = ast.parse((RUNTIME_DIR / name).read_text())
    siblings = {path.stem for path in RUNTIME_DIR.glob("*.py")}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "envserver.runtime":
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            is_sibling = node.module.startswith("envserver.runtime.")
            imported.add(node.module.split(".")[-1] if is_sibling else node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"} | siblings, imported


def test_module_docstring_says_why():
    doc = editor.__doc__
    assert "openhands-aci" in doc and "3.12" in doc and "stdlib" in doc


def test_imports_as_top_level_module_under_python38(tmp_path, python38):
    """python38 (tests/conftest.py) finds a 3.8 anywhere; none is a loud skip, and a failure under CI."""
    script = (
        f"import sys; sys.path.insert(0, {str(EDITOR_PY.parent)!r}); import editor; "
        f"r = editor.Editor().run({{'command': 'view', 'path': {str(EDITOR_PY)!r}}}); "
        "assert r['error'] is False and 'cat -n' in r['output'], r"
    )
    subprocess.run([python38, "-c", script], check=True, timeout=60)


# --- never crash -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        None,
        [],
        "view /etc/passwd",
        {},
        {"command": "view"},
        {"command": "view", "path": ["/tmp"]},
        {"command": "view", "path": {"a": 1}},
        {"command": "view", "path": 3.5},
        {"command": "view", "path": "/tmp\x00x"},
        {"command": "create", "path": "/tmp\x00x", "file_text": "x"},
        {"command": "view", "path": "/etc/hostname", "view_range": {"a": 1}},
        {"command": "view", "path": "/etc/hostname", "view_range": [None, None]},
        {"command": "insert", "path": "/etc/hostname", "insert_line": [1], "new_str": "x"},
        {"command": "insert", "path": "/etc/hostname", "insert_line": 1, "new_str": 5},
        {"command": "str_replace", "path": "/etc/hostname", "old_str": ["x"], "new_str": "y"},
        {"command": ["view"], "path": "/etc/hostname"},
    ],
    ids=lambda a: repr(a)[:60],
)
def test_garbage_arguments_give_errors_not_exceptions(args):
    result = editor.Editor().run(args)
    assert set(result) == {"output", "error"}
    assert isinstance(result["output"], str)
    assert result["error"] is True


def test_missing_path_names_the_parameter(ed):
    assert err(ed.run({"command": "str_replace", "old_str": "a"})) == (
        "Parameter `path` is required for command: str_replace."
    )


def test_unknown_keys_and_linting_flag_are_ignored(ed, tmp_path):
    target = tmp_path / "a.py"
    out = ok(
        ed.run(
            {
                "command": "create",
                "path": str(target),
                "file_text": "x = 1\n",
                "security_risk": "LOW",
                "enable_linting": True,
                "thought": "...",
            }
        )
    )
    assert out == f"File created successfully at: {target}"


# --- deliberate differences --------------------------------------------------------------------------


def test_non_utf8_file_is_read_as_latin1_and_round_trips(ed, tmp_path):
    data = "caf\u00e9 na\u00efve\nr\u00e9sum\u00e9 \xa4\n".encode("latin-1") + b"\x93quoted\x94\n"
    target = tmp_path / "legacy.txt"
    target.write_bytes(data)
    out = ok(ed.run({"command": "view", "path": str(target)}))
    assert "     1\tcaf\u00e9 na\u00efve\n     2\tr\u00e9sum\u00e9 \xa4\n" in out
    ok(ed.run({"command": "str_replace", "path": str(target), "old_str": "na\u00efve", "new_str": "simple"}))
    assert target.read_bytes() == data.replace("na\u00efve".encode("latin-1"), b"simple")
    ok(ed.run({"command": "undo_edit", "path": str(target)}))
    assert target.read_bytes() == data


def test_invalid_utf8_after_the_detection_sample_is_an_error_not_a_crash(ed, tmp_path):
    target = tmp_path / "late.txt"
    target.write_bytes(b"a" * (1024 * 1024 + 10) + b"\n\xe9t\xe9\n")
    message = err(ed.run({"command": "view", "path": str(target)}))
    assert message.startswith("Ran into 'utf-8' codec can't decode byte 0xe9")
    assert message.endswith(f"while trying to read {target}")
    message = err(ed.run({"command": "str_replace", "path": str(target), "old_str": "t", "new_str": "u"}))
    assert "codec can't decode" in message
    assert target.read_bytes().endswith(b"\n\xe9t\xe9\n")


def test_unencodable_insert_leaves_the_file_untouched(ed, tmp_path):
    target = tmp_path / "legacy.txt"
    target.write_bytes("caf\u00e9\n".encode("latin-1"))
    message = err(ed.run({"command": "insert", "path": str(target), "insert_line": 1, "new_str": "\u4e2d"}))
    assert "'latin-1' codec can't encode" in message and message.endswith(f"while trying to write to {target}")
    assert target.read_bytes() == "caf\u00e9\n".encode("latin-1")


@pytest.mark.parametrize("suffix", [".pdf", ".docx", ".xlsx", ".pptx", ".mp3", ".WAV"])
def test_documents_are_not_converted(ed, tmp_path, suffix):
    target = tmp_path / ("doc" + suffix)
    target.write_bytes(b"%PDF-1.4 not really\n")
    assert err(ed.run({"command": "view", "path": str(target)})) == (
        f"Error in converting file to Markdown: converting {suffix} files to Markdown is not available in this "
        f"environment. Please use Python code to read {target}"
    )


def test_insert_keeps_mode_and_symlink(ed, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    link = tmp_path / "link.sh"
    link.symlink_to(script.name)
    ok(ed.run({"command": "insert", "path": str(link), "insert_line": 1, "new_str": "set -e"}))
    assert link.is_symlink()
    assert script.read_text() == "#!/bin/sh\nset -e\necho hi\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    ino = script.stat().st_ino
    ok(ed.run({"command": "insert", "path": str(script), "insert_line": 3, "new_str": "exit 0"}))
    assert script.stat().st_ino == ino and stat.S_IMODE(script.stat().st_mode) == 0o755


def test_fifo_is_refused_without_blocking(ed, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(str(fifo))
    results = []
    worker = threading.Thread(
        target=lambda: results.extend(
            [
                ed.run({"command": "view", "path": str(fifo)}),
                ed.run({"command": "str_replace", "path": str(fifo), "old_str": "a", "new_str": "b"}),
                ed.run({"command": "insert", "path": str(fifo), "insert_line": 0, "new_str": "b"}),
            ]
        ),
        daemon=True,
    )
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the editor blocked on a FIFO"
    for result in results:
        assert "is not a regular file" in err(result)


def test_device_is_refused(ed):
    assert "is not a regular file" in err(ed.run({"command": "view", "path": "/dev/zero"}))


# --- state -------------------------------------------------------------------------------------------


def test_undo_history_is_per_instance(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("one\n")
    first, second = editor.Editor(), editor.Editor()
    ok(first.run({"command": "str_replace", "path": str(target), "old_str": "one", "new_str": "two"}))
    assert err(second.run({"command": "undo_edit", "path": str(target)})) == f"No edit history found for {target}."
    ok(first.run({"command": "undo_edit", "path": str(target)}))
    assert target.read_text() == "one\n"


def test_undo_history_is_keyed_by_normalised_path(ed, tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("one\n")
    ok(ed.run({"command": "str_replace", "path": str(target), "old_str": "one", "new_str": "two"}))
    ok(ed.run({"command": "undo_edit", "path": f"{tmp_path}//./f.txt"}))
    assert target.read_text() == "one\n"


def test_workspace_root_must_be_absolute():
    with pytest.raises(ValueError, match="must be an absolute path"):
        editor.Editor(workspace_root="relative/dir")


def test_max_file_size_is_configurable(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("x" * (1024 * 1024 + 1))
    assert err(editor.Editor(max_file_size_mb=1).run({"command": "view", "path": str(target)})) == (
        f"File validation failed for {target}: File is too large (1.0MB). Maximum allowed size is 1MB."
    )


# --- the binary check's chardet stand-in --------------------------------------------------------------


@pytest.mark.parametrize(
    "data,binary",
    [
        (b"", False),
        (b"plain ascii\n", False),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), True),
        (b"hello\x00world\n", True),
        ("\u4e2d\u6587\u5b57".encode(), True),  # 3 multi-byte chars: chardet is not confident enough
        ("\u4e2d\u6587\u5b57\u4e2d".encode(), False),
        ("utf-16 text\n".encode("utf-16"), False),
        ("utf-32 text\n".encode("utf-32"), False),
        (b"\xef\xbb\xbf" + "\u4e2d".encode(), False),
        (b"text with \xff\n", True),
        ("caf\u00e9 latin-1\n".encode("latin-1"), False),
    ],
)
def test_binary_check(data, binary):
    assert file_encoding.is_binary_string(data) is binary
