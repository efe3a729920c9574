"""minicalc: money, calendar and unit arithmetic for small business tools."""

from minicalc.dates import add_business_days, add_months, business_days_between, quarter_of
from minicalc.money import CurrencyMismatch, Money
from minicalc.units import UnitError, convert, parse_quantity

__version__ = "1.2.0"

__all__ = [
    "CurrencyMismatch",
    "Money",
    "UnitError",
    "add_business_days",
    "add_months",
    "business_days_between",
    "convert",
    "parse_quantity",
    "quarter_of",
]
