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

Deliberate differences (see the conformance test for the list it checks):
- Encoding detection is stdlib-only: BOM -> utf-8-sig / utf-16 / utf-32, valid UTF-8 (first 1 MB) ->
  utf-8, anything else -> latin-1 (lossless). openhands-aci asks charset_normalizer, whose answer for
  non-UTF-8 files is unpredictable (it reads a latin-1 French text as windows-1250), and which also
  adopts an encoding *named* in the first 8 KB (`encoding="latin-1"` in code, `<meta charset=...>`), even
  over valid UTF-8 with few non-ASCII characters. Outputs differ only for files holding (or receiving)
  non-ASCII text: 8 of 5292 .py files in a large sample decode differently.
- binaryornot consults chardet; chardet's verdicts that matter are reproduced for BOMs and for UTF-8
  (its state machine and confidence are ported), not for legacy 8-bit/CJK guesses (0 differences on
  6000 sampled system files).
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

import codecs
import io
import locale
import os
import re
import stat
import subprocess
import time
from pathlib import Path

__all__ = ["Editor", "ToolError"]

MAX_RESPONSE_LEN_CHAR = 16000
SNIPPET_CONTEXT_WINDOW = 4
MAX_HISTORY_PER_FILE = 10

CONTENT_TRUNCATED_NOTICE = (
    "<response clipped><NOTE>Due to the max output limit, only part of the full response has been shown to you.</NOTE>"
)
TEXT_FILE_CONTENT_TRUNCATED_NOTICE = (
    "<response clipped><NOTE>Due to the max output limit, only part of this file has been shown to you. "
    "You should retry this tool after you have searched inside the file with `grep -n` in order to find "
    "the line numbers of what you are looking for.</NOTE>"
)
DIRECTORY_CONTENT_TRUNCATED_NOTICE = (
    "<response clipped><NOTE>Due to the max output limit, only part of this directory has been shown to "
    "you. You should use `ls -la` instead to view large directories incrementally.</NOTE>"
)

COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")
TOOL_NAME = "oh_editor"
SUPPORTED_BINARY_EXTENSIONS = (".docx", ".xlsx", ".pptx", ".pdf", ".mp3", ".wav", ".m4a", ".flac")

_ENCODING_SAMPLE_BYTES = 1024 * 1024
_BINARY_CHUNK_BYTES = 1024


class ToolError(Exception):
    """An error whose message is shown to the agent (openhands-aci's ToolError)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


def _missing_param(command, parameter) -> ToolError:
    return ToolError("Parameter `%s` is required for command: %s." % (parameter, command))


def _invalid_param(parameter, value, hint=None) -> ToolError:
    if hint:
        return ToolError("Invalid `%s` parameter: %s. %s" % (parameter, value, hint))
    return ToolError("Invalid `%s` parameter: %s." % (parameter, value))


def _file_validation_error(path, reason) -> ToolError:
    return ToolError("File validation failed for %s: %s" % (path, reason))


def maybe_truncate(content, truncate_after=MAX_RESPONSE_LEN_CHAR, truncate_notice=CONTENT_TRUNCATED_NOTICE):
    if not truncate_after or len(content) <= truncate_after:
        return content
    return content[:truncate_after] + truncate_notice


# --- binary check (binaryornot 0.4.4 with chardet 5.x, approximated) ----------------------------------

_PRINTABLE_ASCII = b"\n\r\t\f\b" + bytes(range(32, 127))
_PRINTABLE_HIGH_ASCII = bytes(range(127, 256))


# chardet 5's UTF-8 state machine (mbcssm.UTF8_CLS / UTF8_ST / UTF8_CHAR_LEN_TABLE): it rejects some valid
# UTF-8 (e.g. U+10000..U+3FFFF, emoji) and the bytes 0x0e, 0x0f and 0x1b, which matters to the verdict.
_UTF8_CLS = bytes(
    [1] * 14
    + [0, 0]
    + [1] * 11
    + [0]
    + [1] * 4
    + [1] * 96
    + [2, 2, 2, 2, 3, 3, 3, 3]
    + [4] * 24
    + [5] * 32
    + [0, 0]
    + [6] * 30
    + [7]
    + [8] * 12
    + [9]
    + [8, 8]
    + [10]
    + [11] * 7
    + [12, 13, 13, 13, 14, 15, 0, 0]
)
_UTF8_ST = bytes.fromhex(
    "".join(
        "0" + c
        for c in (
            "101111ca9b876543"
            "1111111111111111"
            "2222222222222222"
            "1155551111111111"
            "1115551111111111"
            "1177771111111111"
            "1111771111111111"
            "1199991111111111"
            "1111191111111111"
            "11cccc1111111111"
            "11111c1111111111"
            "11ccc11111111111"
            "1100001111111111"
        )
    )
)
_UTF8_CHAR_LEN = (0, 1, 0, 0, 0, 0, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6)


def _chardet_utf8_confidence(chunk: bytes) -> float:
    """chardet's UTF8Prober confidence for `chunk`, 0.0 when its state machine rejects it."""
    state, char_len, multibyte = 0, 0, 0
    for byte in bytearray(chunk):
        byte_class = _UTF8_CLS[byte]
        if state == 0:
            char_len = _UTF8_CHAR_LEN[byte_class]
        state = _UTF8_ST[state * 16 + byte_class]
        if state == 1:
            return 0.0
        if state == 0 and char_len >= 2:
            multibyte += 1
    if multibyte < 6:
        return 1.0 - 0.99 * 0.5**multibyte
    return 0.99


def _chardet_decodable(chunk: bytes) -> bool:
    """Whether binaryornot would find `chunk` "decodable as unicode": chardet names an encoding other
    than ascii with confidence > 0.9 and the chunk decodes with it. Approximated: BOMs, and chardet's
    UTF-8 prober; its legacy 8-bit and CJK guesses are not modelled (they rarely pass 0.9)."""
    if chunk.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    elif chunk.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        encoding = "utf-32"
    elif chunk.startswith((b"\xfe\xff\x00\x00", b"\x00\x00\xff\xfe")):
        return False  # chardet: X-ISO-10646-UCS-4-3412 / -2143, which Python cannot decode
    elif chunk.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        if not any(b >= 0x80 for b in bytearray(chunk)):
            return False  # chardet: ascii (or a BOM-less UTF-16/32 guess at 0.85)
        if _chardet_utf8_confidence(chunk) <= 0.9:
            return False
        encoding = "utf-8"
    try:
        chunk.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def is_binary_string(chunk) -> bool:
    if not chunk:
        return False
    low_chars = chunk.translate(None, _PRINTABLE_ASCII)
    nontext_ratio1 = float(len(low_chars)) / float(len(chunk))
    high_chars = chunk.translate(None, _PRINTABLE_HIGH_ASCII)
    nontext_ratio2 = float(len(high_chars)) / float(len(chunk))
    is_likely_binary = (nontext_ratio1 > 0.3 and nontext_ratio2 < 0.05) or (
        nontext_ratio1 > 0.8 and nontext_ratio2 > 0.8
    )
    decodable = _chardet_decodable(chunk)
    if is_likely_binary:
        return not decodable
    if decodable:
        return False
    return b"\x00" in chunk or b"\xff" in chunk


def is_binary(filename: str) -> bool:
    if filename.endswith(".pyc"):
        return True
    try:
        with open(filename, "rb") as f:
            chunk = f.read(_BINARY_CHUNK_BYTES)
    except OSError:
        return False
    return is_binary_string(chunk)


# --- encoding ----------------------------------------------------------------------------------------


def _check_readable_kind(path: Path) -> None:
    """Refuse FIFOs, sockets and devices: reading one could block the runtime forever or never end
    (openhands-aci would hang on them)."""
    try:
        mode = os.stat(str(path)).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise _file_validation_error(
            path, "File is not a regular file (FIFO, socket or device) and cannot be read or edited by this tool."
        )


def detect_encoding(path: Path) -> str:
    """The encoding used to read and write an existing file (stdlib stand-in for charset_normalizer).
    Every read and write of an existing file asks this first."""
    if not path.exists():
        return "utf-8"
    _check_readable_kind(path)
    try:
        with open(str(path), "rb") as f:
            sample = f.read(_ENCODING_SAMPLE_BYTES)
    except (OSError, ValueError):
        return "utf-8"  # the caller's own open() reports the problem
    if sample.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if sample.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        # final=False: a multi-byte character cut at the end of the sample is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(sample, False)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


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
                raise ValueError("workspace_root must be an absolute path, got: %s" % workspace_root)
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
        except Exception as e:  # openhands-aci would crash here; the agent gets the reason instead
            return {"output": "ERROR:\n" + (str(e) or type(e).__name__), "error": True}
        return {"output": output, "error": False}

    def _run(self, args) -> str:
        if not isinstance(args, dict):
            raise ToolError("Invalid arguments: expected an object with `command` and `path`, got %s." % (args,))
        command = args.get("command")
        insert_line = args.get("insert_line")
        if isinstance(insert_line, str):  # as OpenHands' _execute_file_editor does
            try:
                insert_line = int(insert_line)
            except ValueError:
                raise ToolError("Invalid insert_line value: '%s'. Expected an integer." % (insert_line,))
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
            raise _missing_param(command, "path")
        if not isinstance(path, str):
            # Python 3.12's pathlib message, which is what openhands-aci (3.12+) shows
            raise TypeError(
                "argument should be a str or an os.PathLike object where __fspath__ returns a str, not %r"
                % type(path).__name__
            )
        _path = Path(path)
        self.validate_path(command, _path)
        if command == "view":
            return self.view(_path, view_range)
        elif command == "create":
            if file_text is None:
                raise _missing_param(command, "file_text")
            self.write_file(_path, file_text)
            self._add_history(_path, file_text)
            return "File created successfully at: %s" % (_path,)
        elif command == "str_replace":
            if old_str is None:
                raise _missing_param(command, "old_str")
            if new_str == old_str:
                raise _invalid_param(
                    "new_str",
                    new_str,
                    "No replacement was performed. `new_str` and `old_str` must be different.",
                )
            return self.str_replace(_path, old_str, new_str)
        elif command == "insert":
            if insert_line is None:
                raise _missing_param(command, "insert_line")
            if new_str is None:
                raise _missing_param(command, "new_str")
            return self.insert(_path, insert_line, new_str)
        elif command == "undo_edit":
            return self.undo_edit(_path)
        raise ToolError(
            "Unrecognized command %s. The allowed commands for the %s tool are: %s"
            % (command, TOOL_NAME, ", ".join(COMMANDS))
        )

    # -- commands ---------------------------------------------------------------------------------

    def view(self, path: Path, view_range=None) -> str:
        if path.is_dir():
            if view_range:
                raise _invalid_param(
                    "view_range",
                    view_range,
                    "The `view_range` parameter is not allowed when `path` points to a directory.",
                )
            return self._view_directory(path)

        self.validate_file(path)
        if self.is_supported_binary_file(path):
            raise ToolError(
                "Error in converting file to Markdown: converting %s files to Markdown is not available in "
                "this environment. Please use Python code to read %s" % (path.suffix, path)
            )

        num_lines = self._count_lines(path)

        start_line = 1
        if not view_range:
            file_content = self.read_file(path)
            return self._make_output(file_content, str(path), start_line)

        if len(view_range) != 2 or not all(isinstance(i, int) for i in view_range):
            raise _invalid_param("view_range", view_range, "It should be a list of two integers.")

        start_line, end_line = view_range
        if start_line < 1 or start_line > num_lines:
            raise _invalid_param(
                "view_range",
                view_range,
                "Its first element `%s` should be within the range of lines of the file: %s."
                % (start_line, [1, num_lines]),
            )

        warning_message = None
        if end_line == -1:
            end_line = num_lines
        elif end_line > num_lines:
            warning_message = "We only show up to %s since there're only %s lines in this file." % (
                num_lines,
                num_lines,
            )
            end_line = num_lines

        if end_line < start_line:
            raise _invalid_param(
                "view_range",
                view_range,
                "Its second element `%s` should be greater than or equal to the first element `%s`."
                % (end_line, start_line),
            )

        file_content = self.read_file(path, start_line=start_line, end_line=end_line)
        output = self._make_output("\n".join(file_content.splitlines()), str(path), start_line)
        if warning_message:
            output = "NOTE: %s\n%s" % (warning_message, output)
        return output

    def _view_directory(self, path: Path) -> str:
        # The same shell commands as openhands-aci (path unquoted, as there), so that find/sort/locale
        # behave exactly alike.
        _, hidden_stdout, _ = _run_shell_cmd("find -L %s -mindepth 1 -maxdepth 1 -name '.*'" % (path,))
        hidden_count = len(hidden_stdout.strip().split("\n")) if hidden_stdout.strip() else 0

        _, stdout, stderr = _run_shell_cmd(
            "find -L %s -maxdepth 2 -not \\( -path '%s/\\.*' -o -path '%s/*/\\.*' \\) | sort" % (path, path, path),
            truncate_notice=DIRECTORY_CONTENT_TRUNCATED_NOTICE,
        )
        if stderr:
            raise ToolError(stderr)
        paths = stdout.strip().split("\n") if stdout.strip() else []
        formatted_paths = []
        for p in paths:
            formatted_paths.append(p + "/" if Path(p).is_dir() else p)
        msg = [
            "Here's the files and directories up to 2 levels deep in %s, excluding hidden items:\n" % (path,)
            + "\n".join(formatted_paths)
        ]
        if hidden_count > 0:
            msg.append(
                "\n%d hidden files/directories in this directory are excluded. You can use 'ls -la %s' to "
                "see them." % (hidden_count, path)
            )
        return "\n".join(msg)

    def str_replace(self, path: Path, old_str, new_str) -> str:
        self.validate_file(path)
        new_str = new_str or ""

        file_content = self.read_file(path)

        occurrences = self._find(old_str, file_content)
        if not occurrences:
            # openhands-aci retries with both strings stripped of surrounding whitespace
            old_str = old_str.strip()
            new_str = new_str.strip()
            occurrences = self._find(old_str, file_content)
            if not occurrences:
                raise ToolError(
                    "No replacement was performed, old_str `%s` did not appear verbatim in %s." % (old_str, path)
                )
        if len(occurrences) > 1:
            line_numbers = sorted(set(line for line, _, _ in occurrences))
            raise ToolError(
                "No replacement was performed. Multiple occurrences of old_str `%s` in lines %s. "
                "Please ensure it is unique." % (old_str, line_numbers)
            )

        replacement_line, matched_text, idx = occurrences[0]
        new_file_content = file_content[:idx] + new_str + file_content[idx + len(matched_text) :]

        self.write_file(path, new_file_content)
        self._add_history(path, file_content)

        start_line = max(0, replacement_line - SNIPPET_CONTEXT_WINDOW)
        end_line = replacement_line + SNIPPET_CONTEXT_WINDOW + new_str.count("\n")
        snippet = self.read_file(path, start_line=start_line + 1, end_line=end_line)

        return (
            "The file %s has been edited. " % (path,)
            + self._make_output(snippet, "a snippet of %s" % (path,), start_line + 1)
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
        encoding = detect_encoding(path)
        self.validate_file(path)
        num_lines = self._count_lines(path)

        if insert_line < 0 or insert_line > num_lines:
            raise _invalid_param(
                "insert_line",
                insert_line,
                "It should be within the range of allowed values: %s" % ([0, num_lines],),
            )

        new_str_lines = new_str.split("\n")

        try:
            with open(str(path), "r", encoding=encoding) as f:
                lines = list(f)
        except Exception as e:
            raise ToolError("Ran into %s while trying to read %s" % (e, path))
        before = []
        after = []
        for i, line in enumerate(lines, 1):
            (before if i <= insert_line else after).append(line)
        new_text = "".join(before) + "".join(line + "\n" for line in new_str_lines) + "".join(after)
        try:
            new_text.encode(encoding)
        except UnicodeError as e:
            raise ToolError("Ran into %s while trying to write to %s" % (e, path))
        self._write_in_place(path, new_text, encoding)

        start_line = max(0, insert_line - SNIPPET_CONTEXT_WINDOW)
        end_line = min(
            num_lines + len(new_str_lines),
            insert_line + SNIPPET_CONTEXT_WINDOW + len(new_str_lines),
        )
        snippet = self.read_file(path, start_line=start_line + 1, end_line=end_line)

        self._add_history(path, "".join(before) + "".join(after))
        self.validate_file(path)  # openhands-aci re-reads the whole file here

        return (
            "The file %s has been edited. " % (path,)
            + self._make_output(
                snippet,
                "a snippet of the edited file",
                max(1, insert_line - SNIPPET_CONTEXT_WINDOW + 1),
            )
            + "Review the changes and make sure they are as expected (correct indentation, no duplicate "
            "lines, etc). Edit the file again if necessary."
        )

    def undo_edit(self, path: Path) -> str:
        self.read_file(path)
        old_text = self._pop_history(path)
        if old_text is None:
            raise ToolError("No edit history found for %s." % (path,))
        self.write_file(path, old_text)
        return "Last edit to %s undone successfully. %s" % (path, self._make_output(old_text, str(path)))

    # -- validation -------------------------------------------------------------------------------

    def validate_path(self, command, path: Path) -> None:
        if not path.is_absolute():
            suggestion_message = "The path should be an absolute path, starting with `/`."
            if self._cwd is not None:
                suggested_path = self._cwd / path
                if suggested_path.exists():
                    suggestion_message += " Maybe you meant %s?" % (suggested_path,)
            raise _invalid_param("path", path, suggestion_message)

        if command == "create" and path.exists():
            raise _invalid_param(
                "path",
                path,
                "File already exists at: %s. Cannot overwrite files using command `create`." % (path,),
            )
        if command != "create" and not path.exists():
            raise _invalid_param("path", path, "The path %s does not exist. Please provide a valid path." % (path,))
        if command != "view":
            if path.is_dir():
                raise _invalid_param(
                    "path",
                    path,
                    "The path %s is a directory and only the `view` command can be used on directories." % (path,),
                )
            if self.is_supported_binary_file(path):
                raise _invalid_param(
                    "path",
                    path,
                    "The path %s points to a binary file (%s) and only the `view` command can be used on "
                    "supported binary files." % (path, path.suffix),
                )

    def validate_file(self, path: Path) -> None:
        if not path.exists() or not path.is_file():
            return
        file_size = os.path.getsize(str(path))
        max_size = self._max_file_size
        if file_size > max_size:
            raise _file_validation_error(
                path,
                "File is too large (%.1fMB). Maximum allowed size is %dMB."
                % (file_size / 1024 / 1024, int(max_size / 1024 / 1024)),
            )
        if self.is_supported_binary_file(path):
            return
        if is_binary(str(path)):
            raise _file_validation_error(
                path, "File appears to be binary and this file type cannot be read or edited by this tool."
            )

    @staticmethod
    def is_supported_binary_file(path: Path) -> bool:
        return path.suffix.lower() in SUPPORTED_BINARY_EXTENSIONS

    # -- file access --------------------------------------------------------------------------------

    def _count_lines(self, path: Path) -> int:
        encoding = detect_encoding(path)
        try:
            with open(str(path), encoding=encoding) as f:
                return sum(1 for _ in f)
        except Exception as e:  # openhands-aci crashes here on undecodable files
            raise ToolError("Ran into %s while trying to read %s" % (e, path))

    def read_file(self, path: Path, start_line=None, end_line=None) -> str:
        encoding = detect_encoding(path) if not path.is_dir() else "utf-8"
        self.validate_file(path)
        try:
            if start_line is not None and end_line is not None:
                lines = []
                with open(str(path), "r", encoding=encoding) as f:
                    for i, line in enumerate(f, 1):
                        if i > end_line:
                            break
                        if i >= start_line:
                            lines.append(line)
                return "".join(lines)
            elif start_line is not None or end_line is not None:
                raise ValueError("Both start_line and end_line must be provided together")
            else:
                with open(str(path), "r", encoding=encoding) as f:
                    return "".join(f)
        except ToolError:
            raise
        except Exception as e:
            raise ToolError("Ran into %s while trying to read %s" % (e, path))

    def write_file(self, path: Path, file_text) -> None:
        encoding = detect_encoding(path) if not path.is_dir() else "utf-8"
        self.validate_file(path)
        try:
            with open(path, "w", encoding=encoding) as f:
                f.write(file_text)
        except Exception as e:
            raise ToolError("Ran into %s while trying to write to %s" % (e, path))

    def _write_in_place(self, path: Path, text: str, encoding: str) -> None:
        try:
            with open(str(path), "w", encoding=encoding) as f:
                f.write(text)
        except Exception as e:
            raise ToolError("Ran into %s while trying to write to %s" % (e, path))

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
        return "Here's the result of running `cat -n` on %s:\n" % (snippet_description,) + snippet_content + "\n"


def _run_shell_cmd(
    cmd: str, timeout=120.0, truncate_after=MAX_RESPONSE_LEN_CHAR, truncate_notice=CONTENT_TRUNCATED_NOTICE
):
    """openhands_aci.utils.shell.run_shell_cmd: (returncode, stdout, stderr), each output truncated."""
    start_time = time.time()
    process = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ToolError("Command '%s' timed out after %.2f seconds" % (cmd, time.time() - start_time))
    stdout = _decode_text(out)
    stderr = _decode_text(err)
    return (
        process.returncode or 0,
        maybe_truncate(stdout, truncate_after=truncate_after, truncate_notice=truncate_notice),
        maybe_truncate(stderr, truncate_after=truncate_after, truncate_notice=CONTENT_TRUNCATED_NOTICE),
    )


def _decode_text(data: bytes) -> str:
    """Decode like subprocess's text mode (locale encoding, universal newlines); undecodable bytes are
    replaced instead of raising (openhands-aci would crash on them)."""
    encoding = locale.getpreferredencoding(False)
    try:
        return io.TextIOWrapper(io.BytesIO(data), encoding=encoding).read()
    except UnicodeDecodeError:
        return io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors="replace").read()
