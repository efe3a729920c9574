import datetime as dt

from minicalc.dates import add_business_days, add_months, business_days_between, month_end, quarter_of


def test_add_months_simple():
    assert add_months(dt.date(2024, 1, 15), 1) == dt.date(2024, 2, 15)
    assert add_months(dt.date(2024, 11, 20), 3) == dt.date(2025, 2, 20)


def test_add_months_negative():
    assert add_months(dt.date(2024, 3, 10), -4) == dt.date(2023, 11, 10)


def test_add_business_days_skips_weekend():
    friday = dt.date(2024, 6, 7)
    assert add_business_days(friday, 1) == dt.date(2024, 6, 10)
    assert add_business_days(dt.date(2024, 6, 10), -1) == friday


def test_add_business_days_skips_holidays():
    holidays = {dt.date(2024, 12, 25), dt.date(2024, 12, 26)}
    assert add_business_days(dt.date(2024, 12, 24), 1, holidays) == dt.date(2024, 12, 27)


def test_business_days_between():
    assert business_days_between(dt.date(2024, 6, 3), dt.date(2024, 6, 10)) == 5
    assert business_days_between(dt.date(2024, 6, 10), dt.date(2024, 6, 3)) == -5


def test_quarter_and_month_end():
    assert [quarter_of(dt.date(2024, m, 1)) for m in (1, 4, 7, 12)] == [1, 2, 3, 4]
    assert month_end(dt.date(2024, 2, 10)) == dt.date(2024, 2, 29)
