import pytest

from textkit.csvline import CsvLineError, join_line, split_line


def test_split_plain_fields():
    assert split_line("a,b,c") == ["a", "b", "c"]


def test_split_quoted_delimiter():
    assert split_line('1,"Smith, John",x') == ["1", "Smith, John", "x"]


def test_split_empty_fields_and_newline():
    assert split_line("a,,c,\r\n") == ["a", "", "c", ""]


def test_split_strip_only_unquoted():
    assert split_line(' a ; " b "', delimiter=";", strip=True) == ["a", " b "]


def test_unterminated_quote_is_an_error():
    with pytest.raises(CsvLineError):
        split_line('a,"open')


def test_join_quotes_when_needed():
    assert join_line(["a", "b,c", None, 3]) == 'a,"b,c",,3'
    assert join_line(['say "hi"']) == '"say ""hi"""'


def test_round_trip_simple_values():
    values = ["x", "y z", "1,2", ""]
    assert split_line(join_line(values)) == values
