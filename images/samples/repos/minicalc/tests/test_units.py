import pytest

from minicalc.units import UnitError, convert, format_quantity, parse_quantity


def test_length_conversion():
    assert convert(5, "km", "m") == 5000
    assert convert(12, "in", "ft") == pytest.approx(1.0)
    assert convert(5, "km", "mi") == pytest.approx(3.10686, rel=1e-5)


def test_mass_and_volume():
    assert convert(1, "lb", "g") == pytest.approx(453.59237)
    assert convert(2, "gal", "l") == pytest.approx(7.570823568)


def test_dimension_mismatch():
    with pytest.raises(UnitError):
        convert(1, "kg", "m")


def test_unknown_unit():
    with pytest.raises(UnitError):
        convert(1, "parsec", "m")


def test_parse_quantity():
    assert parse_quantity("2.5 km") == (2.5, "km")
    assert parse_quantity("-3ft") == (-3.0, "ft")
    with pytest.raises(UnitError):
        parse_quantity("two metres")


def test_format_quantity():
    assert format_quantity(3.14159, "m") == "3.14 m"
    assert format_quantity(2.0, "kg") == "2 kg"
