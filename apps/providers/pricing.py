"""What a call costs: the one pricing function, used by the gateway, the ledger and budgets.

    cost = (input - cached) x input price + cached x cached-input price + output x output price

prices in USD per million tokens; Decimal throughout, quantized to 1e-10 (the ledger's precision).
With prices of at most 4 decimal places per million every per-token price fits in 10 decimals,
so costs are exact and sums of costs equal costs of sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

PER_MILLION = Decimal(1_000_000)
QUANTUM = Decimal("1e-10")


@dataclass(frozen=True)
class Prices:
    input: Decimal
    cached_input: Decimal
    output: Decimal

    @classmethod
    def of(cls, model: Any) -> Prices:
        """The prices of a providers.Model (or anything with its three price fields)."""
        return cls(
            input=Decimal(model.input_price_per_million),
            cached_input=Decimal(model.cached_input_price_per_million),
            output=Decimal(model.output_price_per_million),
        )


def cost_usd(*, prices: Prices, input_tokens: int, cached_input_tokens: int = 0, output_tokens: int = 0) -> Decimal:
    """`input_tokens` is the whole prompt; `cached_input_tokens` the part of it billed at the cached price."""
    cached = min(max(cached_input_tokens, 0), max(input_tokens, 0))
    uncached = max(input_tokens, 0) - cached
    total = (
        uncached * prices.input + cached * prices.cached_input + max(output_tokens, 0) * prices.output
    ) / PER_MILLION
    return total.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def worst_case_cost_usd(*, prices: Prices, prompt_tokens: int, max_output_tokens: int) -> Decimal:
    """What a budget reserves before a call: the whole prompt uncached and every allowed output token."""
    return cost_usd(prices=prices, input_tokens=prompt_tokens, output_tokens=max_output_tokens)
