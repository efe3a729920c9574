import pytest

from textkit.ini import IniError, IniFile, dump_ini, parse_ini

SAMPLE = """\
; global settings
name = demo

[server]
Host = example.org
port: 8080
debug = yes   ; turn off in production

[paths]
root = "  /srv/app  "
"""


def test_sections_in_file_order():
    ini = parse_ini(SAMPLE)
    assert ini.sections() == ["server", "paths"]


def test_keys_are_case_insensitive():
    ini = parse_ini(SAMPLE)
    assert ini.get("server", "HOST") == "example.org"
    assert ini.get("server", "host") == "example.org"


def test_colon_separator_and_getint():
    ini = parse_ini(SAMPLE)
    assert ini.getint("server", "port") == 8080


def test_inline_comment_and_boolean():
    ini = parse_ini(SAMPLE)
    assert ini.get("server", "debug") == "yes"
    assert ini.getboolean("server", "debug") is True


def test_default_section_fallback():
    ini = parse_ini(SAMPLE)
    assert ini.get("paths", "name") == "demo"
    assert ini.get("paths", "missing", "fallback") == "fallback"


def test_quoted_value_keeps_spaces():
    ini = parse_ini(SAMPLE)
    assert ini.get("paths", "root") == "  /srv/app  "


def test_bad_header_reports_line_number():
    with pytest.raises(IniError) as info:
        parse_ini("[ok]\na = 1\n[broken\n")
    assert info.value.lineno == 3


def test_dump_round_trip():
    ini = IniFile()
    ini.set("db", "user", "admin")
    ini.set("db", "note", "keep ; this")
    text = dump_ini(ini)
    again = parse_ini(text)
    assert again.items("db") == [("user", "admin"), ("note", "keep ; this")]
