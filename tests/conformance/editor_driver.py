"""Run scripted str_replace_editor scenarios with one implementation; print the results as JSON.

    python editor_driver.py aci  < spec.json > results.json   # inside the openhands-aci venv (Python >= 3.11)
    python editor_driver.py ours < spec.json > results.json   # any python3 >= 3.8

spec: {"root": ABS_DIR, "runtime_dir": DIR_WITH_editor.py, "scenarios": [{"name", "workspace_root"?, "steps"}]}
A step is a fixture action ({"write": rel, "text"|"b64": ..., "repeat": n}, {"mkdir": rel},
{"symlink": rel, "target": str}) or {"id": str, "op": {editor args}}. "{ws}" in an op's `path` (and in a
scenario's workspace_root) stands for that scenario's directory, ROOT/NAME. ROOT is wiped first.

Output: {"python": [major, minor], "results": {"SCENARIO/STEP_ID": {"output", "error"} | {"crash": "Type: msg"},
"state": snapshot}}, where
state is the scenario directory after the step: every entry with its type and, for files, size + sha256.

Kept Python 3.8-compatible: it also runs our editor under python3.8.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import sys


def _aci_caller(workspace_root):
    from openhands_aci.editor import OHEditor, ToolError, file_editor

    editor = OHEditor(workspace_root=workspace_root) if workspace_root else None

    def call(args):
        args = dict(args)
        # OpenHands' runtime (_execute_file_editor) converts a string insert_line before calling the editor
        insert_line = args.get("insert_line")
        if isinstance(insert_line, str):
            try:
                args["insert_line"] = int(insert_line)
            except ValueError:
                return {
                    "output": f"ERROR:\nInvalid insert_line value: '{insert_line}'. Expected an integer.",
                    "error": True,
                }
        try:
            if editor is None:
                raw = file_editor(**args)
                m = re.match(r"<oh_aci_output_([0-9a-f]+)>\n(.*)\n</oh_aci_output_\1>\Z", raw, re.DOTALL)
                if not m:
                    return {"crash": f"unparsable file_editor output: {raw[:500]!r}"}
                data = json.loads(m.group(2))
                return {"output": data["formatted_output_and_error"], "error": bool(data["error"])}
            try:
                result = editor(**args)
            except ToolError as e:
                return {"output": "ERROR:\n" + e.message, "error": True}
            if result.error:
                return {"output": "ERROR:\n" + result.error, "error": True}
            return {"output": result.output, "error": False}
        except TypeError as e:  # OpenHands' runtime wrapper: `except TypeError as e: return f'ERROR:\n{e}'`
            return {"output": "ERROR:\n" + str(e), "error": True}
        except Exception as e:  # noqa: BLE001 - openhands-aci crashed; reported as such
            return {"crash": f"{type(e).__name__}: {e}"}

    return call


def _ours_caller(workspace_root, runtime_dir):
    if runtime_dir not in sys.path:
        sys.path.insert(0, runtime_dir)
    import editor as editor_module

    editor = editor_module.Editor(workspace_root=workspace_root)

    def call(args):
        try:
            return editor.run(args)
        except Exception as e:  # noqa: BLE001 - must never happen; the test reports it
            return {"crash": f"{type(e).__name__}: {e}"}

    return call


def _setup(step, ws):
    if "write" in step:
        path = os.path.join(ws, step["write"])
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent)
        data = base64.b64decode(step["b64"]) if "b64" in step else step["text"].encode("utf-8")
        with open(path, "wb") as f:
            f.write(data * step.get("repeat", 1))
    elif "mkdir" in step:
        os.makedirs(os.path.join(ws, step["mkdir"]))
    elif "symlink" in step:
        os.symlink(step["target"], os.path.join(ws, step["symlink"]))
    else:
        raise ValueError(f"unknown step {step!r}")


def _snapshot(ws):
    state = []
    for dirpath, dirnames, filenames in os.walk(ws):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, ws)
            if os.path.islink(full):
                state.append([rel, "link", os.readlink(full)])
            elif os.path.isdir(full):
                state.append([rel, "dir"])
            elif os.path.isfile(full):
                with open(full, "rb") as f:
                    data = f.read()
                state.append([rel, "file", len(data), hashlib.sha256(data).hexdigest()[:16]])
            else:
                state.append([rel, "other"])
    return state


def _subst(args, ws):
    args = dict(args)
    if isinstance(args.get("path"), str):
        args["path"] = args["path"].replace("{ws}", ws)
    return args


def main():
    impl = sys.argv[1]
    spec = json.load(sys.stdin)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # nothing but the JSON result may reach stdout
    if impl == "aci":
        import logging

        import openhands_aci.editor  # noqa: F401 - turns on DEBUG logging

        logging.disable(logging.CRITICAL)

    root = spec["root"]
    if os.path.lexists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    results = {}
    shared = None  # one editor for all scenarios without workspace_root, like file_editor's global editor
    for scenario in spec["scenarios"]:
        ws = os.path.join(root, scenario["name"])
        os.makedirs(ws)
        workspace_root = scenario.get("workspace_root")
        if workspace_root:
            workspace_root = workspace_root.replace("{ws}", ws)
        if workspace_root:
            call = _aci_caller(workspace_root) if impl == "aci" else _ours_caller(workspace_root, spec["runtime_dir"])
        else:
            if shared is None:
                shared = _aci_caller(None) if impl == "aci" else _ours_caller(None, spec["runtime_dir"])
            call = shared
        for step in scenario["steps"]:
            if "op" not in step:
                _setup(step, ws)
                continue
            result = call(_subst(step["op"], ws))
            result["state"] = _snapshot(ws)
            results[scenario["name"] + "/" + step["id"]] = result
    real_stdout.write(json.dumps({"results": results, "python": list(sys.version_info[:2])}))
    real_stdout.flush()


if __name__ == "__main__":
    main()
