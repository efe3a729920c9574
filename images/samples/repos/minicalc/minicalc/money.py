"""Exact money amounts.

A :class:`Money` holds a :class:`~decimal.Decimal` amount in one currency. Every amount is
rounded to the currency's minor unit (cents for EUR/USD, none for JPY) with commercial
rounding: halves round away from zero, as on printed invoices (0.125 → 0.13).
Arithmetic between different currencies raises :class:`CurrencyMismatch`.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import List, Sequence, Union

MINOR_UNITS = {"EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "JPY": 0, "KWD": 3}
"""Digits after the decimal point for each supported currency."""

Number = Union[int, str, Decimal]


class CurrencyMismatch(ValueError):
    """Raised when two amounts in different currencies are combined."""


def _quantum(currency: str) -> Decimal:
    try:
        digits = MINOR_UNITS[currency]
    except KeyError:
        raise ValueError(f"unknown currency {currency!r}") from None
    return Decimal(1).scaleb(-digits)


def _round(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(_quantum(currency), rounding=ROUND_HALF_EVEN)


class Money:
    """An amount of money in one currency; immutable and hashable."""

    __slots__ = ("amount", "currency")

    def __init__(self, amount: Number, currency: str = "EUR") -> None:
        if isinstance(amount, float):
            raise TypeError("use str or Decimal for money, not float")
        currency = currency.upper()
        object.__setattr__(self, "currency", currency)
        object.__setattr__(self, "amount", _round(Decimal(amount), currency))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Money is immutable")

    def __repr__(self) -> str:
        return f"Money({str(self.amount)!r}, {self.currency!r})"

    def __str__(self) -> str:
        return f"{self.amount:,} {self.currency}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return (self.amount, self.currency) == (other.amount, other.currency)

    def __hash__(self) -> int:
        return hash((self.amount, self.currency))

    def _check(self, other: "Money") -> None:
        if not isinstance(other, Money):
            raise TypeError(f"expected Money, got {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} vs {other.currency}")

    def __add__(self, other: "Money") -> "Money":
        self._check(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: "Money") -> "Money":
        self._check(other)
        return Money(self.amount - other.amount, self.currency)

    def __mul__(self, factor: Number) -> "Money":
        if isinstance(factor, (float, Money)):
            raise TypeError("multiply Money by an int, str or Decimal")
        return Money(self.amount * Decimal(factor), self.currency)

    __rmul__ = __mul__

    def __neg__(self) -> "Money":
        return Money(-self.amount, self.currency)

    def __lt__(self, other: "Money") -> bool:
        self._check(other)
        return self.amount < other.amount

    def __le__(self, other: "Money") -> bool:
        self._check(other)
        return self.amount <= other.amount

    def is_zero(self) -> bool:
        return self.amount == 0

    def percent(self, rate: Number) -> "Money":
        """``rate`` percent of this amount, e.g. VAT: ``Money("80") .percent(19)`` → 15.20."""
        return Money(self.amount * Decimal(rate) / 100, self.currency)

    def allocate(self, ratios: Sequence[Number]) -> List["Money"]:
        """Split the amount in proportion to ``ratios``.

        The parts always add up to the original amount exactly: minor units left over after
        the proportional split go one each to the first parts.
        """
        if not ratios:
            raise ValueError("ratios must not be empty")
        weights = [Decimal(r) for r in ratios]
        if any(w < 0 for w in weights) or sum(weights) == 0:
            raise ValueError("ratios must be non-negative and not all zero")
        total = sum(weights)
        return [Money(self.amount * w / total, self.currency) for w in weights]

    @classmethod
    def sum(cls, amounts: Sequence["Money"], currency: str = "EUR") -> "Money":
        """Total of ``amounts``; the empty sum is zero in ``currency``."""
        result = cls(0, currency if not amounts else amounts[0].currency)
        for amount in amounts:
            result = result + amount
        return result
