"""Unit conversion for lengths, masses, volumes and temperatures.

Units are grouped by dimension; converting between dimensions raises :class:`UnitError`.
Temperatures are absolute readings: ``convert(100, "degC", "degF")`` is the boiling point of
water in Fahrenheit, 212.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

# unit -> (dimension, factor to the dimension's base unit)
UNITS: Dict[str, Tuple[str, float]] = {
    # length, base: metre
    "mm": ("length", 0.001),
    "cm": ("length", 0.01),
    "m": ("length", 1.0),
    "km": ("length", 1000.0),
    "in": ("length", 0.0254),
    "ft": ("length", 0.3048),
    "mi": ("length", 1609.344),
    # mass, base: kilogram
    "g": ("mass", 0.001),
    "kg": ("mass", 1.0),
    "lb": ("mass", 0.45359237),
    "oz": ("mass", 0.028349523125),
    # volume, base: litre
    "ml": ("volume", 0.001),
    "l": ("volume", 1.0),
    "gal": ("volume", 3.785411784),
    # temperature, base: kelvin
    "K": ("temperature", 1.0),
    "degC": ("temperature", 1.0),
    "degF": ("temperature", 5.0 / 9.0),
}

_QUANTITY = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


class UnitError(ValueError):
    """Raised for an unknown unit or a conversion between different dimensions."""


def dimension(unit: str) -> str:
    try:
        return UNITS[unit][0]
    except KeyError:
        raise UnitError(f"unknown unit {unit!r}") from None


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert ``value`` from ``from_unit`` to ``to_unit`` (same dimension only)."""
    if dimension(from_unit) != dimension(to_unit):
        raise UnitError(f"cannot convert {dimension(from_unit)} ({from_unit}) to {dimension(to_unit)} ({to_unit})")
    if from_unit == to_unit:
        return float(value)
    base = value * UNITS[from_unit][1]
    return base / UNITS[to_unit][1]


def parse_quantity(text: str) -> Tuple[float, str]:
    """Parse ``"2.5 km"`` into ``(2.5, "km")``; the unit must be known."""
    match = _QUANTITY.match(text)
    if not match:
        raise UnitError(f"not a quantity: {text!r}")
    number, unit = match.groups()
    dimension(unit)
    return float(number), unit


def format_quantity(value: float, unit: str, digits: int = 2) -> str:
    """``format_quantity(3.14159, "m")`` → ``"3.14 m"``; trailing zeros are dropped."""
    dimension(unit)
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits > 0 else f"{value:.0f}"
    return f"{text} {unit}"
