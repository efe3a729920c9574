from decimal import Decimal

import pytest

from minicalc.money import CurrencyMismatch, Money


def test_amount_is_rounded_to_minor_unit():
    assert Money("10.004", "EUR").amount == Decimal("10.00")
    assert Money("1234.6", "JPY").amount == Decimal("1235")
    assert Money("1.23456", "KWD").amount == Decimal("1.235")


def test_float_is_rejected():
    with pytest.raises(TypeError):
        Money(0.1)


def test_add_and_subtract():
    assert Money("19.99") + Money("0.01") == Money("20")
    assert Money("5", "USD") - Money("7.50", "USD") == Money("-2.50", "USD")


def test_currency_mismatch():
    with pytest.raises(CurrencyMismatch):
        Money("1", "EUR") + Money("1", "USD")


def test_multiply_and_repr():
    assert Money("19.99", "EUR") * 3 == Money("59.97", "EUR")
    assert repr(2 * Money("1.50", "USD")) == "Money('3.00', 'USD')"


def test_percent_for_vat():
    assert Money("80.00").percent(19) == Money("15.20")


def test_allocate_even_split():
    parts = Money("100.00").allocate([1, 1, 2])
    assert parts == [Money("25.00"), Money("25.00"), Money("50.00")]


def test_sum_and_str():
    total = Money.sum([Money("1000"), Money("234.50")])
    assert str(total) == "1,234.50 EUR"
    assert Money.sum([], "USD") == Money("0", "USD")
