"""In-container `str_replace_editor`: a stdlib-only reimplementation of the openhands-aci 0.3.3 file editor.

Why hand-written: SWE-Gym trajectories, and the models trained on them, use the openhands-aci editor
(`openhands_aci.editor.OHEditor`, reached through `file_editor` / OpenHands' runtime), so the observations
our agents see must be the same text, byte for byte. But openhands-aci needs Python >= 3.12 and ~600 MB of
dependencies (tree-sitter, pandas, pdfminer, ...), which cannot be assumed inside arbitrary task images;
this module only needs the image's own python3 (>= 3.8) and is copied into the container with the rest of
the runtime. openhands-aci stays the reference: tests/conformance/test_editor_conformance.py runs the real
package on the host and this module (under the host python and python3.8) on the same scripted operations
and compares the outputs byte for byte.

Contract: `Editor().run(args) -> {"output": str, "error": bool}`. `args` uses OpenHands' names (command,
path, file_text, old_str, new_str, insert_line, view_range; unknown keys are ignored). `output` is the
observation text an OpenHands agent sees: openhands-aci's success text, or `"ERROR:\\n" + its error text`
(the `formatted_output_and_error` of `file_editor`, which is also what OpenHands' runtime builds); `error`
is True for errors. `run` never raises.

Reproduced on purpose, quirks included: message texts; `cat -n` style numbering, including the extra
numbered empty line after a trailing newline; snippet windows of 4 lines; the whitespace-stripping retry
of `str_replace`; non-overlapping occurrence counting; `create` recording the *new* text as its undo entry;
10 undo entries per file; universal-newline reads (CRLF files are written back with LF, as openhands-aci
does); the 16000-character truncation; the directory listing, which runs the very same `find ... | sort`
shell commands; the 10 MB limit and the binaryornot-style binary check.

Layout (every file is copied into the container with the rest of the runtime and imported flat, its directory
being sys.path[0] there): this module holds the commands, their arguments, the undo history and the output;
editor_files.py the file access and its checks; file_encoding.py the stdlib ports of the encoding detection and the
binary check; directory_view.py the `view` of a directory; editor_messages.py the errors and truncation notices.

Deliberate differences (see the conformance test for the list it checks):
- Encoding detection and the binary check are stdlib-only approximations of charset_normalizer and
  binaryornot/chardet: file_encoding.py says where and how much they differ (only for non-ASCII text).
- Documents with a markdown converter in openhands-aci (.pdf .docx .xlsx .pptx and audio) are not
  converted: viewing one gives openhands-aci's conversion-failure error text.
- Linting (`enable_linting`) is never run; the argument is ignored (OpenHands runs with it off).
- `insert` rewrites the file in place, keeping its mode, owner and symlinks (openhands-aci moves a 0600
  temp file over it: a script loses its executable bit, which `git diff` then shows).
- Editing a binary file that charset_normalizer cannot place at all (a PNG, say) fails in openhands-aci
  with a TypeError from inside its encoding detection ("'>' not supported between instances of
  'NoneType' and 'float'"); we give the binary-file error that `view` gives.
- Where openhands-aci itself crashes on bad input, OpenHands' runtime wrapper behaviour is followed
  (a string `insert_line` is converted with int(); a TypeError becomes `ERROR:\\n<message>`); any other
  exception becomes an error text instead of a crash, and a missing `path` gives
  "Parameter `path` is required for command: <command>.".
- FIFOs, sockets and devices are refused with a validation error (openhands-aci would block or read
  forever, e.g. on /dev/zero).
- Undo history is kept in memory (openhands-aci keeps it in a temp directory on disk).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks this directory as the envserver.runtime package; the container runs it flat
    from envserver.runtime import directory_view, editor_files
    from envserver.runtime.editor_messages import (
        TEXT_FILE_CONTENT_TRUNCATED_NOTICE,
        ToolError,
        invalid_param,
        maybe_truncate,
        missing_param,
    )
else:
    import directory_view
    import editor_files
    from editor_messages import (
        TEXT_FILE_CONTENT_TRUNCATED_NOTICE,
        ToolError,
        invalid_param,
        maybe_truncate,
        missing_param,
    )

__all__ = ["Editor", "ToolError"]

SNIPPET_CONTEXT_WINDOW = 4
MAX_HISTORY_PER_FILE = 10

COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")
TOOL_NAME = "oh_editor"


# --- the editor --------------------------------------------------------------------------------------


class Editor:
    """openhands-aci's OHEditor, output for output. One instance per session: it holds the undo history."""

    MAX_FILE_SIZE_MB = 10

    def __init__(self, max_file_size_mb=None, workspace_root=None, max_history_per_file=MAX_HISTORY_PER_FILE):
        self._max_file_size = (max_file_size_mb or self.MAX_FILE_SIZE_MB) * 1024 * 1024
        self._max_history_per_file = max_history_per_file
        self._history = {}  # str(path) -> list of previous texts, oldest first
        if workspace_root is not None:
            workspace_path = Path(workspace_root)
            if not workspace_path.is_absolute():
                raise ValueError(f"workspace_root must be an absolute path, got: {workspace_root}")
            self._cwd = workspace_path
        else:
            self._cwd = None

    # -- entry point ------------------------------------------------------------------------------

    def run(self, args) -> dict:
        """Run one str_replace_editor call. Never raises."""
        try:
            output = self._run(args)
        except ToolError as e:
            return {"output": "ERROR:\n" + e.message, "error": True}
        except TypeError as e:  # OpenHands' runtime wrapper turns these into an error observation
            return {"output": "ERROR:\n" + str(e), "error": True}
        except Exception as e:  # noqa: BLE001 - openhands-aci would crash here; the agent gets the reason instead
            return {"output": "ERROR:\n" + (str(e) or type(e).__name__), "error": True}
        return {"output": output, "error": False}

    def _run(self, args) -> str:
        if not isinstance(args, dict):
            raise ToolError(f"Invalid arguments: expected an object with `command` and `path`, got {args}.")
        command = args.get("command")
        insert_line = args.get("insert_line")
        if isinstance(insert_line, str):  # as OpenHands' _execute_file_editor does
            try:
                insert_line = int(insert_line)
            except ValueError:
                raise ToolError(f"Invalid insert_line value: '{insert_line}'. Expected an integer.")
        return self._call(
            command=command,
            path=args.get("path"),
            file_text=args.get("file_text"),
            view_range=args.get("view_range"),
            old_str=args.get("old_str"),
            new_str=args.get("new_str"),
            insert_line=insert_line,
        )

    def _call(self, command, path, file_text=None, view_range=None, old_str=None, new_str=None, insert_line=None):
        if path is None:
            raise missing_param(command, "path")
        if not isinstance(path, str):
            # Python 3.12's pathlib message, which is what openhands-aci (3.12+) shows
            raise TypeError(
                "argument should be a str or an os.PathLike object where __fspath__ returns a str, "
                f"not {type(path).__name__!r}"
            )
        _path = Path(path)
        self.validate_path(command, _path)
        if command == "view":
            return self.view(_path, view_range)
        elif command == "create":
            if file_text is None:
                raise missing_param(command, "file_text")
            editor_files.write_file(_path, file_text, self._max_file_size)
            self._add_history(_path, file_text)
            return f"File created successfully at: {_path}"
        elif command == "str_replace":
            if old_str is None:
                raise missing_param(command, "old_str")
            if new_str == old_str:
                raise invalid_param(
                    "new_str",
                    new_str,
                    "No replacement was performed. `new_str` and `old_str` must be different.",
                )
            return self.str_replace(_path, old_str, new_str)
        elif command == "insert":
            if insert_line is None:
                raise missing_param(command, "insert_line")
            if new_str is None:
                raise missing_param(command, "new_str")
            return self.insert(_path, insert_line, new_str)
        elif command == "undo_edit":
            return self.undo_edit(_path)
        raise ToolError(
            f"Unrecognized command {command}. The allowed commands for the {TOOL_NAME} tool are: " + ", ".join(COMMANDS)
        )

    # -- commands ---------------------------------------------------------------------------------

    def view(self, path: Path, view_range=None) -> str:
        if path.is_dir():
            if view_range:
                raise invalid_param(
                    "view_range",
                    view_range,
                    "The `view_range` parameter is not allowed when `path` points to a directory.",
                )
            return directory_view.view_directory(path)

        editor_files.validate_file(path, self._max_file_size)
        if editor_files.is_supported_binary_file(path):
            raise ToolError(
                f"Error in converting file to Markdown: converting {path.suffix} files to Markdown is not available in "
                f"this environment. Please use Python code to read {path}"
            )

        num_lines = editor_files.count_lines(path)

        start_line = 1
        if not view_range:
            file_content = editor_files.read_file(path, self._max_file_size)
            return self._make_output(file_content, str(path), start_line)

        if len(view_range) != 2 or not all(isinstance(i, int) for i in view_range):
            raise invalid_param("view_range", view_range, "It should be a list of two integers.")

        start_line, end_line = view_range
        if start_line < 1 or start_line > num_lines:
            raise invalid_param(
                "view_range",
                view_range,
                f"Its first element `{start_line}` should be within the range of lines of the file: {[1, num_lines]}.",
            )

        warning_message = None
        if end_line == -1:
            end_line = num_lines
        elif end_line > num_lines:
            warning_message = f"We only show up to {num_lines} since there're only {num_lines} lines in this file."
            end_line = num_lines

        if end_line < start_line:
            raise invalid_param(
                "view_range",
                view_range,
                f"Its second element `{end_line}` should be greater than or equal to the first element `{start_line}`.",
            )

        file_content = editor_files.read_file(path, self._max_file_size, start_line=start_line, end_line=end_line)
        output = self._make_output("\n".join(file_content.splitlines()), str(path), start_line)
        if warning_message:
            output = f"NOTE: {warning_message}\n{output}"
        return output

    def str_replace(self, path: Path, old_str, new_str) -> str:
        editor_files.validate_file(path, self._max_file_size)
        new_str = new_str or ""

        file_content = editor_files.read_file(path, self._max_file_size)

        occurrences = self._find(old_str, file_content)
        if not occurrences:
            # openhands-aci retries with both strings stripped of surrounding whitespace
            old_str = old_str.strip()
            new_str = new_str.strip()
            occurrences = self._find(old_str, file_content)
            if not occurrences:
                raise ToolError(f"No replacement was performed, old_str `{old_str}` did not appear verbatim in {path}.")
        if len(occurrences) > 1:
            line_numbers = sorted({line for line, _, _ in occurrences})
            raise ToolError(
                f"No replacement was performed. Multiple occurrences of old_str `{old_str}` in lines {line_numbers}. "
                "Please ensure it is unique."
            )

        replacement_line, matched_text, idx = occurrences[0]
        new_file_content = file_content[:idx] + new_str + file_content[idx + len(matched_text) :]

        editor_files.write_file(path, new_file_content, self._max_file_size)
        self._add_history(path, file_content)

        start_line = max(0, replacement_line - SNIPPET_CONTEXT_WINDOW)
        end_line = replacement_line + SNIPPET_CONTEXT_WINDOW + new_str.count("\n")
        snippet = editor_files.read_file(path, self._max_file_size, start_line=start_line + 1, end_line=end_line)

        return (
            f"The file {path} has been edited. "
            + self._make_output(snippet, f"a snippet of {path}", start_line + 1)
            + "Review the changes and make sure they are as expected. Edit the file again if necessary."
        )

    @staticmethod
    def _find(old_str, file_content):
        # Non-overlapping matches, as re.finditer finds them in openhands-aci.
        return [
            (file_content.count("\n", 0, m.start()) + 1, m.group(), m.start())
            for m in re.finditer(re.escape(old_str), file_content)
        ]

    def insert(self, path: Path, insert_line, new_str) -> str:
        encoding = editor_files.encoding_of(path)
        editor_files.validate_file(path, self._max_file_size)
        num_lines = editor_files.count_lines(path)

        if insert_line < 0 or insert_line > num_lines:
            raise invalid_param(
                "insert_line",
                insert_line,
                f"It should be within the range of allowed values: {[0, num_lines]}",
            )

        new_str_lines = new_str.split("\n")

        try:
            with open(str(path), "r", encoding=encoding) as f:
                lines = list(f)
        except Exception as e:  # noqa: BLE001 - as openhands-aci: any read error is reported
            raise ToolError(f"Ran into {e} while trying to read {path}")
        before: list[str] = []
        after: list[str] = []
        for i, line in enumerate(lines, 1):
            (before if i <= insert_line else after).append(line)
        new_text = "".join(before) + "".join(line + "\n" for line in new_str_lines) + "".join(after)
        try:
            new_text.encode(encoding)
        except UnicodeError as e:
            raise ToolError(f"Ran into {e} while trying to write to {path}")
        editor_files.write_in_place(path, new_text, encoding)

        start_line = max(0, insert_line - SNIPPET_CONTEXT_WINDOW)
        end_line = min(
            num_lines + len(new_str_lines),
            insert_line + SNIPPET_CONTEXT_WINDOW + len(new_str_lines),
        )
        snippet = editor_files.read_file(path, self._max_file_size, start_line=start_line + 1, end_line=end_line)

        self._add_history(path, "".join(before) + "".join(after))
        editor_files.validate_file(path, self._max_file_size)  # openhands-aci re-reads the whole file here

        return (
            f"The file {path} has been edited. "
            + self._make_output(
                snippet,
                "a snippet of the edited file",
                max(1, insert_line - SNIPPET_CONTEXT_WINDOW + 1),
            )
            + "Review the changes and make sure they are as expected (correct indentation, no duplicate "
            "lines, etc). Edit the file again if necessary."
        )

    def undo_edit(self, path: Path) -> str:
        editor_files.read_file(path, self._max_file_size)
        old_text = self._pop_history(path)
        if old_text is None:
            raise ToolError(f"No edit history found for {path}.")
        editor_files.write_file(path, old_text, self._max_file_size)
        return f"Last edit to {path} undone successfully. {self._make_output(old_text, str(path))}"

    # -- validation -------------------------------------------------------------------------------

    def validate_path(self, command, path: Path) -> None:
        if not path.is_absolute():
            suggestion_message = "The path should be an absolute path, starting with `/`."
            if self._cwd is not None:
                suggested_path = self._cwd / path
                if suggested_path.exists():
                    suggestion_message += f" Maybe you meant {suggested_path}?"
            raise invalid_param("path", path, suggestion_message)

        if command == "create" and path.exists():
            raise invalid_param(
                "path",
                path,
                f"File already exists at: {path}. Cannot overwrite files using command `create`.",
            )
        if command != "create" and not path.exists():
            raise invalid_param("path", path, f"The path {path} does not exist. Please provide a valid path.")
        if command != "view":
            if path.is_dir():
                raise invalid_param(
                    "path",
                    path,
                    f"The path {path} is a directory and only the `view` command can be used on directories.",
                )
            if editor_files.is_supported_binary_file(path):
                raise invalid_param(
                    "path",
                    path,
                    f"The path {path} points to a binary file ({path.suffix}) and only the `view` command can be "
                    "used on supported binary files.",
                )

    # -- history ------------------------------------------------------------------------------------

    def _add_history(self, path: Path, content) -> None:
        entries = self._history.setdefault(str(path), [])
        entries.append(content)
        while len(entries) > self._max_history_per_file:
            entries.pop(0)

    def _pop_history(self, path: Path):
        entries = self._history.get(str(path))
        if not entries:
            return None
        return entries.pop()

    # -- output -------------------------------------------------------------------------------------

    @staticmethod
    def _make_output(snippet_content: str, snippet_description: str, start_line=1) -> str:
        snippet_content = maybe_truncate(snippet_content, truncate_notice=TEXT_FILE_CONTENT_TRUNCATED_NOTICE)
        snippet_content = "\n".join(f"{i + start_line:6}\t{line}" for i, line in enumerate(snippet_content.split("\n")))
        return f"Here's the result of running `cat -n` on {snippet_description}:\n" + snippet_content + "\n"
