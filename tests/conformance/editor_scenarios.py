"""Scripted str_replace_editor scenarios for the conformance test (pure data, JSON-serialisable).

Each scenario runs in its own directory ROOT/NAME ("{ws}" in a path); steps run in order, fixtures
interleaved with editor operations, so undo history and file state carry over within a scenario.
An op step may carry "deviation" (why we differ on purpose) and "expect" (our exact output then), and
"reference_python" (the oldest Python whose openhands-aci run is a valid reference for it: the 3.11
fallback venv words some interpreter messages differently).
"""

import base64

PY_LINES = [
    "import os",
    "import sys",
    "",
    "",
    "def main(argv):",
    "    name = argv[1] if len(argv) > 1 else 'world'",
    "    print('hello', name)",
    "    return 0",
    "",
    "",
    "if __name__ == '__main__':",
    "    sys.exit(main(sys.argv))",
]
PY_TEXT = "\n".join(PY_LINES) + "\n"

REPLACE_TEXT = (
    "class Counter:\n"
    "    def __init__(self):\n"
    "        self.count = 0\n"
    "\n"
    "    def inc(self):\n"
    "        self.count += 1\n"
    "        return self.count\n"
    "\n"
    "    def dec(self):\n"
    "        self.count -= 1\n"
    "        return self.count\n"
    "\n"
    "\tdef tabbed(self):\n"
    "\t\treturn 'tab'  # caf\u00e9 \u2603\n"
    "\n"
    "x = 'aaa'  # a.b*(c) [regex] $1\n"
    "last line without newline"
)

TEN_LINES = "".join(f"line {i}\n" for i in range(1, 11))


def w(rel, text=None, b64=None, data=None, repeat=1):
    step = {"write": rel}
    if data is not None:
        step["b64"] = base64.b64encode(data).decode("ascii")
    elif b64 is not None:
        step["b64"] = b64
    else:
        step["text"] = text
    if repeat != 1:
        step["repeat"] = repeat
    return step


def op(step_id, **args):
    """An editor call. `_deviation`: why we differ from openhands-aci on purpose; then `_expect` is our exact
    result ({"output", "error"}, "{ws}" substituted), or None when only the file-system state differs."""
    deviation = args.pop("_deviation", None)
    expect = args.pop("_expect", None)
    step = {"id": step_id, "op": args}
    if deviation:
        step["deviation"] = deviation
        step["expect"] = expect
    return step


# openhands-aci's encoding detection (charset_normalizer) returns confidence None for this PNG, and its
# `None > 0.9` raises before the binary check: OpenHands shows that TypeError. We give the binary-file
# error that `view` gives for the same file.
PNG_DEVIATION = "openhands-aci fails with a TypeError inside its encoding detection; we report the binary file"
PNG_BINARY_ERROR = {
    "output": "ERROR:\nFile validation failed for {ws}/image.png: File appears to be binary and this file type "
    "cannot be read or edited by this tool.",
    "error": True,
}


def view(step_id, path, **kw):
    return op(step_id, command="view", path=path, **kw)


SCENARIOS = [
    {
        "name": "view",
        "steps": [
            w("app.py", PY_TEXT),
            view("whole_file", "{ws}/app.py"),
            view("range_middle", "{ws}/app.py", view_range=[3, 6]),
            view("range_to_end_minus_one", "{ws}/app.py", view_range=[5, -1]),
            view("range_single_line", "{ws}/app.py", view_range=[4, 4]),
            view("range_first_to_last", "{ws}/app.py", view_range=[1, 12]),
            view("range_end_beyond_file_note", "{ws}/app.py", view_range=[10, 100]),
            view("range_start_zero", "{ws}/app.py", view_range=[0, 3]),
            view("range_start_negative", "{ws}/app.py", view_range=[-1, 3]),
            view("range_start_beyond_file", "{ws}/app.py", view_range=[13, 14]),
            view("range_end_before_start", "{ws}/app.py", view_range=[6, 3]),
            view("range_end_minus_two", "{ws}/app.py", view_range=[2, -2]),
            view("range_one_element", "{ws}/app.py", view_range=[3]),
            view("range_three_elements", "{ws}/app.py", view_range=[1, 2, 3]),
            view("range_strings", "{ws}/app.py", view_range=["1", "3"]),
            view("range_floats", "{ws}/app.py", view_range=[1.0, 2.0]),
            view("range_empty_list_views_all", "{ws}/app.py", view_range=[]),
            view("range_as_string", "{ws}/app.py", view_range="1,3"),
            view("range_as_int", "{ws}/app.py", view_range=5),
            view("path_normalised", "{ws}//./app.py"),
            view("path_trailing_slash", "{ws}/app.py/"),
            view("nonexistent_path", "{ws}/missing.py"),
            view("relative_path", "app.py"),
            view("relative_dot_path", "./app.py"),
            view("empty_path", ""),
        ],
    },
    {
        "name": "view_text_kinds",
        "steps": [
            w("empty.txt", ""),
            w("no_newline.txt", "first\nsecond"),
            w("crlf.txt", "one\r\ntwo\r\nthree\r\n"),
            w("cr_only.txt", "one\rtwo\rthree"),
            w("odd_breaks.txt", "a\x0bb\x0cc\x1cd\u2028e\nf\n"),
            w("unicode.txt", "h\u00e9llo \u4e16\u754c \U0001f600\n\u00fcber\n"),
            w("bom.txt", "\ufeffwith bom\nsecond\n"),
            w("utf16.txt", data="utf-16 text\nline two\n".encode("utf-16")),
            w("blank_lines.txt", "\n\n\n"),
            w("trailing_spaces.txt", "a  \n\tb\t\n"),
            view("empty_file", "{ws}/empty.txt"),
            view("empty_file_range", "{ws}/empty.txt", view_range=[1, 1]),
            view("no_trailing_newline", "{ws}/no_newline.txt"),
            view("no_trailing_newline_range", "{ws}/no_newline.txt", view_range=[1, -1]),
            view("crlf", "{ws}/crlf.txt"),
            view("crlf_range", "{ws}/crlf.txt", view_range=[2, 3]),
            view("cr_only", "{ws}/cr_only.txt"),
            view("odd_line_breaks", "{ws}/odd_breaks.txt"),
            view("odd_line_breaks_range", "{ws}/odd_breaks.txt", view_range=[1, 2]),
            view("unicode", "{ws}/unicode.txt"),
            view("utf8_bom", "{ws}/bom.txt"),
            view("utf16_bom", "{ws}/utf16.txt"),
            view("only_blank_lines", "{ws}/blank_lines.txt", view_range=[2, 3]),
            view("trailing_whitespace", "{ws}/trailing_spaces.txt"),
        ],
    },
    {
        "name": "view_directory",
        "steps": [
            w("proj/README.md", "# readme\n"),
            w("proj/setup.py", "print(1)\n"),
            w("proj/.env", "SECRET=1\n"),
            w("proj/.git/HEAD", "ref\n"),
            w("proj/pkg/__init__.py", ""),
            w("proj/pkg/.hidden_in_sub", "x\n"),
            w("proj/pkg/deep/deeper.py", "x\n"),
            w("proj/pkg/deep/.hidden_deep", "x\n"),
            {"mkdir": "proj/empty_dir"},
            {"mkdir": "proj/Upper"},
            w("proj/_under.txt", "x\n"),
            w("proj/name with space.txt", "x\n"),
            {"symlink": "proj/link_to_pkg", "target": "pkg"},
            {"symlink": "proj/dangling", "target": "does-not-exist"},
            w("plain/a.txt", "a\n"),
            w("plain/b/c.txt", "c\n"),
            w("with space/inner.txt", "x\n"),
            view("directory", "{ws}/proj"),
            view("directory_trailing_slash", "{ws}/proj/"),
            view("directory_with_view_range", "{ws}/proj", view_range=[1, 2]),
            view("directory_with_empty_view_range", "{ws}/proj", view_range=[]),
            view("directory_without_hidden", "{ws}/plain"),
            view("directory_name_with_space", "{ws}/with space"),
            view("subdirectory", "{ws}/proj/pkg"),
            view("symlinked_directory", "{ws}/proj/link_to_pkg"),
        ],
    },
    {
        "name": "view_large_directory",
        "steps": [w(f"many/file_with_a_rather_long_name_{i:04d}.txt", "") for i in range(400)]
        + [view("directory_truncated", "{ws}/many")],
    },
    {
        "name": "create",
        "steps": [
            w("existing.txt", "already here\n"),
            {"mkdir": "adir"},
            op("new_file", command="create", path="{ws}/new.py", file_text="def f():\n    return 1\n"),
            view("view_created", "{ws}/new.py"),
            op("existing_file", command="create", path="{ws}/existing.txt", file_text="x"),
            op("directory_path", command="create", path="{ws}/adir", file_text="x"),
            op("missing_parent_dir", command="create", path="{ws}/nope/sub/new.txt", file_text="x"),
            op("missing_file_text", command="create", path="{ws}/no_text.txt"),
            op("empty_file_text", command="create", path="{ws}/empty.txt", file_text=""),
            view("view_empty_created", "{ws}/empty.txt"),
            op(
                "unicode_text",
                command="create",
                path="{ws}/uni.txt",
                file_text="\u00e9\u00e8 \u4e2d\u6587 \U0001f680\n",
            ),
            view("view_unicode_created", "{ws}/uni.txt"),
            op("crlf_text_kept", command="create", path="{ws}/crlf.txt", file_text="a\r\nb\r\n"),
            op("file_text_not_a_string", command="create", path="{ws}/int.txt", file_text=42),
            op("relative_path", command="create", path="rel.txt", file_text="x"),
            op("undo_after_create", command="undo_edit", path="{ws}/new.py"),
            op("undo_after_create_again", command="undo_edit", path="{ws}/new.py"),
            op("pdf_suffix", command="create", path="{ws}/doc.pdf", file_text="not really a pdf"),
            op("pdf_str_replace_refused", command="str_replace", path="{ws}/doc.pdf", old_str="not", new_str="n"),
        ],
    },
    {
        "name": "str_replace",
        "steps": [
            w("c.py", REPLACE_TEXT),
            op(
                "unique_single_line",
                command="str_replace",
                path="{ws}/c.py",
                old_str="self.count = 0",
                new_str="self.count = 10",
            ),
            op(
                "multi_line",
                command="str_replace",
                path="{ws}/c.py",
                old_str="    def dec(self):\n        self.count -= 1\n",
                new_str="    def dec(self, by=1):\n        self.count -= by\n        assert by > 0\n",
            ),
            op("not_found", command="str_replace", path="{ws}/c.py", old_str="does_not_exist", new_str="x"),
            op(
                "not_found_after_strip",
                command="str_replace",
                path="{ws}/c.py",
                old_str="  nothing here  \n",
                new_str="x",
            ),
            op(
                "multiple_occurrences",
                command="str_replace",
                path="{ws}/c.py",
                old_str="return self.count",
                new_str="return -1",
            ),
            op("multiple_on_one_line", command="str_replace", path="{ws}/c.py", old_str="a", new_str="b"),
            op("old_equals_new", command="str_replace", path="{ws}/c.py", old_str="Counter", new_str="Counter"),
            op(
                "tabs",
                command="str_replace",
                path="{ws}/c.py",
                old_str="\tdef tabbed(self):\n\t\treturn 'tab'",
                new_str="\tdef tabbed(self):\n\t\treturn '\\t'",
            ),
            op(
                "unicode",
                command="str_replace",
                path="{ws}/c.py",
                old_str="caf\u00e9 \u2603",
                new_str="\u00fcber \U0001f600",
            ),
            op(
                "regex_metacharacters",
                command="str_replace",
                path="{ws}/c.py",
                old_str="a.b*(c) [regex] $1",
                new_str="\\1 \\g<0> $&",
            ),
            op(
                "overlapping_pattern_counts_once", command="str_replace", path="{ws}/c.py", old_str="'aa", new_str="'AA"
            ),
            op(
                "whitespace_stripped_retry",
                command="str_replace",
                path="{ws}/c.py",
                old_str="\n   class Counter:  \n",
                new_str="   class Tally:   \n",
            ),
            op(
                "last_line_without_newline",
                command="str_replace",
                path="{ws}/c.py",
                old_str="last line without newline",
                new_str="last line\nnow two lines",
            ),
            op(
                "old_str_with_trailing_newline_at_eof",
                command="str_replace",
                path="{ws}/c.py",
                old_str="now two lines\n",
                new_str="x",
            ),
            op(
                "empty_new_str_deletes",
                command="str_replace",
                path="{ws}/c.py",
                old_str="        assert by > 0\n",
                new_str="",
            ),
            op("missing_new_str_deletes", command="str_replace", path="{ws}/c.py", old_str="    def inc(self):\n"),
            op("missing_old_str", command="str_replace", path="{ws}/c.py", new_str="x"),
            op("first_line", command="str_replace", path="{ws}/c.py", old_str="class Tally:", new_str="class T:"),
            view("final_content", "{ws}/c.py"),
            op("on_directory", command="str_replace", path="{ws}", old_str="a", new_str="b"),
            op("on_missing_file", command="str_replace", path="{ws}/missing.py", old_str="a", new_str="b"),
            op("relative_path", command="str_replace", path="c.py", old_str="a", new_str="b"),
        ],
    },
    {
        "name": "str_replace_edge",
        "steps": [
            w("small.txt", "ab\ncd\n"),
            w("empty.txt", ""),
            w("crlf.txt", "alpha\r\nbeta\r\ngamma\r\n"),
            w("ws.txt", "x = 1\ny = 2\n"),
            w("long.txt", "".join(f"row {i}\n" for i in range(1, 41))),
            op("empty_old_str_everywhere", command="str_replace", path="{ws}/small.txt", old_str="", new_str="z"),
            op("whitespace_only_old_str", command="str_replace", path="{ws}/small.txt", old_str="   ", new_str="z"),
            op(
                "empty_old_str_in_empty_file",
                command="str_replace",
                path="{ws}/empty.txt",
                old_str="",
                new_str="filled\n",
            ),
            op(
                "crlf_file_rewritten_with_lf",
                command="str_replace",
                path="{ws}/crlf.txt",
                old_str="beta",
                new_str="BETA",
            ),
            op(
                "crlf_old_str_does_not_match",
                command="str_replace",
                path="{ws}/crlf.txt",
                old_str="alpha\r\nBETA",
                new_str="x",
            ),
            op(
                "new_str_many_lines_snippet",
                command="str_replace",
                path="{ws}/long.txt",
                old_str="row 20\n",
                new_str="".join(f"new {i}\n" for i in range(12)),
            ),
            op("near_end_snippet", command="str_replace", path="{ws}/long.txt", old_str="row 39", new_str="ROW"),
            w("bom.txt", "\ufeffkeep the bom\n"),
            w("utf16.txt", data="utf-16 content\nsecond\n".encode("utf-16")),
            w("target.txt", "via symlink\n"),
            {"symlink": "link.txt", "target": "target.txt"},
            op("utf8_bom_kept", command="str_replace", path="{ws}/bom.txt", old_str="keep", new_str="kept"),
            op("utf16_kept", command="str_replace", path="{ws}/utf16.txt", old_str="second", new_str="2nd"),
            op("through_symlink", command="str_replace", path="{ws}/link.txt", old_str="via", new_str="through"),
            op("parent_is_a_file", command="create", path="{ws}/bom.txt/child.txt", file_text="x"),
            {"mkdir": "sub"},
            view("dotdot_path_kept", "{ws}/sub/../bom.txt"),
            op("old_str_not_a_string", command="str_replace", path="{ws}/ws.txt", old_str=5, new_str="x"),
            op("new_str_not_a_string", command="str_replace", path="{ws}/ws.txt", old_str="x = 1", new_str=7),
        ],
    },
    {
        "name": "insert",
        "steps": [
            w("t.txt", TEN_LINES),
            w("nonl.txt", "a\nb"),
            w("empty.txt", ""),
            w("crlf.txt", "one\r\ntwo\r\n"),
            op("at_line_zero", command="insert", path="{ws}/t.txt", insert_line=0, new_str="HEADER"),
            op("in_middle", command="insert", path="{ws}/t.txt", insert_line=5, new_str="mid 1\nmid 2"),
            op("at_end", command="insert", path="{ws}/t.txt", insert_line=13, new_str="FOOTER"),
            op("beyond_end", command="insert", path="{ws}/t.txt", insert_line=15, new_str="x"),
            op("negative", command="insert", path="{ws}/t.txt", insert_line=-1, new_str="x"),
            op(
                "new_str_with_trailing_newline",
                command="insert",
                path="{ws}/t.txt",
                insert_line=2,
                new_str="ends with newline\n",
            ),
            op("empty_new_str", command="insert", path="{ws}/t.txt", insert_line=3, new_str=""),
            op("insert_line_as_string", command="insert", path="{ws}/t.txt", insert_line="1", new_str="from str"),
            op("insert_line_not_a_number", command="insert", path="{ws}/t.txt", insert_line="one", new_str="x"),
            op("insert_line_float", command="insert", path="{ws}/t.txt", insert_line=8.0, new_str="float"),
            op("missing_insert_line", command="insert", path="{ws}/t.txt", new_str="x"),
            op("missing_new_str", command="insert", path="{ws}/t.txt", insert_line=1),
            view("final_content", "{ws}/t.txt"),
            op("end_of_file_without_newline", command="insert", path="{ws}/nonl.txt", insert_line=2, new_str="c"),
            op("into_empty_file", command="insert", path="{ws}/empty.txt", insert_line=0, new_str="only\nlines"),
            op("into_crlf_file", command="insert", path="{ws}/crlf.txt", insert_line=1, new_str="1.5"),
            op("tabs_and_unicode", command="insert", path="{ws}/crlf.txt", insert_line=0, new_str="\tt\u00e9st \u2603"),
            w("bom.txt", "\ufeffbom line\n"),
            w("utf16.txt", data="utf-16 line\n".encode("utf-16")),
            w("cr_only.txt", "one\rtwo"),
            op("utf8_bom_kept", command="insert", path="{ws}/bom.txt", insert_line=1, new_str="second"),
            op("utf16_kept", command="insert", path="{ws}/utf16.txt", insert_line=0, new_str="first"),
            op("cr_only_line_endings", command="insert", path="{ws}/cr_only.txt", insert_line=1, new_str="1.5"),
            op("on_directory", command="insert", path="{ws}", insert_line=0, new_str="x"),
            op("on_missing_file", command="insert", path="{ws}/missing.txt", insert_line=0, new_str="x"),
        ],
    },
    {
        "name": "insert_symlink",
        "steps": [
            w("target.txt", "target\n"),
            {"symlink": "link.txt", "target": "target.txt"},
            op(
                "through_symlink",
                command="insert",
                path="{ws}/link.txt",
                insert_line=1,
                new_str="via link",
                _deviation="openhands-aci moves a 0600 temp file over the path (replacing a symlink by a regular "
                "file); we rewrite the file in place: same output, different file-system state",
                _expect=None,
            ),
        ],
    },
    {
        "name": "undo",
        "steps": [
            w("u.txt", "alpha\nbeta\ngamma\n"),
            op("nothing_to_undo", command="undo_edit", path="{ws}/u.txt"),
            op("edit_1_replace", command="str_replace", path="{ws}/u.txt", old_str="beta", new_str="BETA"),
            op("edit_2_insert", command="insert", path="{ws}/u.txt", insert_line=3, new_str="delta"),
            op("edit_3_replace", command="str_replace", path="{ws}/u.txt", old_str="alpha\n", new_str=""),
            op("undo_3", command="undo_edit", path="{ws}/u.txt"),
            op("undo_2", command="undo_edit", path="{ws}/u.txt"),
            op("undo_1", command="undo_edit", path="{ws}/u.txt"),
            op("undo_exhausted", command="undo_edit", path="{ws}/u.txt"),
            op("missing_file", command="undo_edit", path="{ws}/missing.txt"),
            op("directory", command="undo_edit", path="{ws}"),
        ]
        + [
            op(
                f"many_edit_{i:02d}",
                command="str_replace",
                path="{ws}/u.txt",
                old_str=f"gamma{'' if i == 1 else i - 1}",
                new_str=f"gamma{i}",
            )
            for i in range(1, 13)
        ]
        + [op(f"many_undo_{i:02d}", command="undo_edit", path="{ws}/u.txt") for i in range(1, 12)],
    },
    {
        "name": "binary_and_large",
        "steps": [
            w("image.png", data=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4),
            w("nul.txt", data=b"hello\x00world\n"),
            w("mod.pyc", "print('text, but .pyc')\n"),
            w("few_cjk.txt", "\u4e2d\u6587\u5b57"),
            w("many_cjk.txt", "\u4e2d\u6587\u5b57\u4e2d\u6587\u5b57\n"),
            w("ff_byte.txt", data=b"text with \xff byte\n"),
            w("emoji_only.txt", "\U0001f600" * 8 + "\n"),
            w("cjk_ext_b.txt", "\U00020000" * 8 + "\n"),
            w("big.txt", "x" * 1023 + "\n", repeat=11 * 1024),
            w("long.txt", "".join(f"{i:05d} {'abcdefghij' * 3}\n" for i in range(1, 801))),
            view("binary_png", "{ws}/image.png"),
            op(
                "binary_png_str_replace",
                command="str_replace",
                path="{ws}/image.png",
                old_str="PNG",
                new_str="x",
                _deviation=PNG_DEVIATION,
                _expect=PNG_BINARY_ERROR,
            ),
            op(
                "binary_png_insert",
                command="insert",
                path="{ws}/image.png",
                insert_line=0,
                new_str="x",
                _deviation=PNG_DEVIATION,
                _expect=PNG_BINARY_ERROR,
            ),
            op(
                "binary_png_undo",
                command="undo_edit",
                path="{ws}/image.png",
                _deviation=PNG_DEVIATION,
                _expect=PNG_BINARY_ERROR,
            ),
            view("nul_bytes", "{ws}/nul.txt"),
            op("nul_bytes_str_replace", command="str_replace", path="{ws}/nul.txt", old_str="hello", new_str="x"),
            op("nul_bytes_insert", command="insert", path="{ws}/nul.txt", insert_line=0, new_str="x"),
            op("nul_bytes_undo", command="undo_edit", path="{ws}/nul.txt"),
            view("pyc_extension", "{ws}/mod.pyc"),
            view("few_multibyte_chars_is_binary", "{ws}/few_cjk.txt"),
            view("many_multibyte_chars_is_text", "{ws}/many_cjk.txt"),
            view("ff_byte", "{ws}/ff_byte.txt"),
            view("emoji_only_is_binary", "{ws}/emoji_only.txt"),
            view(
                "cjk_extension_b_is_text",
                "{ws}/cjk_ext_b.txt",
                _deviation="charset_normalizer reads this valid UTF-8 as a Cyrillic code page (mojibake); "
                "we read UTF-8",
                _expect={
                    "output": "Here's the result of running `cat -n` on {ws}/cjk_ext_b.txt:\n"
                    "     1\t" + "\U00020000" * 8 + "\n     2\t\n",
                    "error": False,
                },
            ),
            view("too_large", "{ws}/big.txt"),
            view("too_large_range", "{ws}/big.txt", view_range=[1, 2]),
            op("too_large_str_replace", command="str_replace", path="{ws}/big.txt", old_str="x", new_str="y"),
            view("long_file_truncated", "{ws}/long.txt"),
            view("long_file_range", "{ws}/long.txt", view_range=[400, 405]),
            op("long_file_replace", command="str_replace", path="{ws}/long.txt", old_str="00790 ", new_str="X "),
        ],
    },
    {
        "name": "arguments",
        "steps": [
            w("f.txt", "content\n"),
            op("unknown_command", command="delete", path="{ws}/f.txt"),
            op("unknown_command_missing_path", command="delete", path="{ws}/missing.txt"),
            op("unknown_command_on_directory", command="delete", path="{ws}"),
            op("command_null", command=None, path="{ws}/f.txt"),
            # pathlib's TypeError text, as Python 3.12 words it (openhands-aci needs 3.12)
            dict(op("path_not_a_string", command="view", path=5), reference_python=[3, 12]),
            op(
                "path_null",
                command="view",
                path=None,
                _deviation="openhands-aci crashes in pathlib on a null path; we name the missing parameter",
                _expect={"output": "ERROR:\nParameter `path` is required for command: view.", "error": True},
            ),
        ],
    },
    {
        "name": "workspace_root",
        "workspace_root": "{ws}",
        "steps": [
            w("src/mod.py", "x = 1\n"),
            view("relative_existing_suggests", "src/mod.py"),
            view("relative_missing_no_suggestion", "src/other.py"),
            op("relative_create_suggests_nothing", command="create", path="src/new.py", file_text="x"),
            op("relative_str_replace_suggests", command="str_replace", path="src/mod.py", old_str="1", new_str="2"),
        ],
    },
]


def op_steps():
    """(scenario name, step) for every editor operation, in order."""
    for scenario in SCENARIOS:
        for step in scenario["steps"]:
            if "op" in step:
                yield scenario["name"], step
