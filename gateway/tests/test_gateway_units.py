"""Human units: kWh, tokens with symbol and decimals, local times and intervals."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import units
from gateway.errors import ConfigError

SUN = units.Token("SUN", 18)


@pytest.mark.parametrize("wh, text", [
    (79, "0.079 kWh"), (0, "0.000 kWh"), (9999, "9.999 kWh"), (12_345, "12.35 kWh"),
    (1_234_567, "1234.6 kWh"), (None, "-"), (-250, "-0.250 kWh")])
def test_kwh_has_sensible_decimals(wh, text):
    assert units.kwh(wh) == text


def test_kwh_signed():
    assert units.kwh(1500, signed=True) == "+1.500 kWh"


@pytest.mark.parametrize("amount, text", [
    (11_850_000_000_000_000, "0.01185 SUN"),  # 79 Wh at 0.15 SUN/kWh
    (10**18, "1 SUN"), (0, "0 SUN"), (1, "<0.000001 SUN"),
    (1_234_567_890 * 10**18, "1234567890 SUN"),
    (123_456_789_000_000_000, "0.123457 SUN"),  # rounded half up at 6 decimals
    (-5 * 10**17, "-0.5 SUN")])
def test_tokens_with_symbol_and_decimals(amount, text):
    assert units.tokens(amount, SUN) == text


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=24))
def test_token_amount_is_the_exact_value_rounded(amount, decimals):
    shown = units.token_amount(amount, decimals)
    exact = Decimal(amount) / Decimal(10) ** decimals
    if shown.startswith("<"):
        assert 0 < exact < Decimal(shown[1:])
    else:
        places = min(6, decimals)
        assert abs(Decimal(shown) - exact) <= Decimal(5) / Decimal(10) ** (places + 1)


def test_local_times_and_intervals_in_the_community_zone():
    paris = units.zone("Europe/Paris")
    t = 1_750_154_400  # 2025-06-17 10:00 UTC
    assert units.local_time(t, paris) == "2025-06-17 12:00 CEST"
    assert units.local_time(t, units.zone("UTC")) == "2025-06-17 10:00 UTC"
    k = t // 900
    assert units.interval_span(k, 900, paris) == "2025-06-17 12:00-12:15 CEST"
    assert units.interval_span(k, 900, paris, with_date=False) == "12:00-12:15"
    assert units.local_day(t, paris) == "2025-06-17"


def test_a_local_day_is_its_intervals_even_across_a_dst_change():
    paris = units.zone("Europe/Paris")
    start, end = units.day_bounds("2025-03-30", paris)  # clocks go forward: 23 h
    assert end - start == 23 * 3600
    first, last = units.day_intervals("2025-03-30", 900, paris)
    assert last - first + 1 == 92
    assert units.local_time(first * 900, paris).endswith("00:00 CET")


def test_unknown_zone_and_bad_date_are_clear_errors():
    with pytest.raises(ConfigError, match="Mars/Base"):
        units.zone("Mars/Base")
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        units.day_bounds("17/06/2025", None)
