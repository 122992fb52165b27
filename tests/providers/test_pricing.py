"""Cost = (input - cached) x input price + cached x cached price + output x output price, per million, exact."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from apps.providers.pricing import Prices, cost_usd, worst_case_cost_usd

PRICES = Prices(input=Decimal("2.50"), cached_input=Decimal("1.25"), output=Decimal("10.00"))


def test_cost_charges_cached_input_at_its_own_price():
    cost = cost_usd(prices=PRICES, input_tokens=1_000, cached_input_tokens=400, output_tokens=200)
    assert cost == Decimal("0.0040000000")  # 600 x 2.5 + 400 x 1.25 + 200 x 10 = 4000 per million


def test_costs_are_quantized_to_the_ledgers_ten_decimals():
    odd = Prices(input=Decimal("0.0000003"), cached_input=Decimal("0"), output=Decimal("0"))
    assert cost_usd(prices=odd, input_tokens=1) == Decimal("0E-10")
    assert cost_usd(prices=PRICES, input_tokens=1).as_tuple().exponent == -10


def test_cached_tokens_never_exceed_the_prompt():
    assert cost_usd(prices=PRICES, input_tokens=10, cached_input_tokens=50) == cost_usd(
        prices=PRICES, input_tokens=10, cached_input_tokens=10
    )


def test_the_worst_case_is_the_whole_prompt_uncached_plus_every_allowed_output_token():
    assert worst_case_cost_usd(prices=PRICES, prompt_tokens=100, max_output_tokens=50) == Decimal("0.0007500000")


@given(
    calls=st.lists(
        st.tuples(st.integers(0, 200_000), st.integers(0, 200_000), st.integers(0, 50_000)), min_size=1, max_size=50
    )
)
def test_with_prices_of_four_decimals_the_sum_of_costs_is_the_cost_of_the_sums(calls):
    total = sum(
        (cost_usd(prices=PRICES, input_tokens=i, cached_input_tokens=c, output_tokens=o) for i, c, o in calls),
        Decimal("0"),
    )
    inputs = sum(i for i, _, _ in calls)
    cached = sum(min(c, i) for i, c, _ in calls)
    outputs = sum(o for _, _, o in calls)
    assert total == cost_usd(prices=PRICES, input_tokens=inputs, cached_input_tokens=cached, output_tokens=outputs)
