"""Calendar arithmetic: months, business days and quarters.

Business days are Monday to Friday; an optional set of holidays is skipped as well.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Iterable, Optional, Set

_ONE_DAY = dt.timedelta(days=1)


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day ``months`` months later (or earlier, for negative ``months``).

    When the target month is shorter, the result is its last day: Jan 31 + 1 month = Feb 28/29.
    """
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    return day.replace(year=year, month=month + 1)


def is_business_day(day: dt.date, holidays: Optional[Iterable[dt.date]] = None) -> bool:
    return day.weekday() < 5 and day not in set(holidays or ())


def add_business_days(day: dt.date, count: int, holidays: Optional[Iterable[dt.date]] = None) -> dt.date:
    """The date ``count`` business days after ``day`` (before it, for negative ``count``)."""
    skip: Set[dt.date] = set(holidays or ())
    step = _ONE_DAY if count >= 0 else -_ONE_DAY
    remaining = abs(count)
    current = day
    while remaining:
        current += step
        if is_business_day(current, skip):
            remaining -= 1
    return current


def business_days_between(start: dt.date, end: dt.date, holidays: Optional[Iterable[dt.date]] = None) -> int:
    """Business days in the half-open range ``[start, end)``; negative when ``end`` < ``start``."""
    if end < start:
        return -business_days_between(end, start, holidays)
    skip = set(holidays or ())
    count = 0
    current = start
    while current < end:
        if is_business_day(current, skip):
            count += 1
        current += _ONE_DAY
    return count


def quarter_of(day: dt.date) -> int:
    """Calendar quarter (1–4) of ``day``."""
    return (day.month - 1) // 3 + 1


def month_end(day: dt.date) -> dt.date:
    """Last day of ``day``'s month."""
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])
