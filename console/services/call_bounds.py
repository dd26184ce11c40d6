"""What a gateway call may cost at most: its model's price (none: the call is refused), and
its worst case, from what its body bounds and the operator's caps for what it does not (see
``limits``, which reserves it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from console.errors import BadRequest
from console.models import ModelPrice
from console.services.ledger import MAX_COUNT, ModelNotPriced, price_for, priced_models

__all__ = ["InputBounds", "UnboundedCall", "WorstCase", "model_price", "worst_case"]

_MILLION, _THOUSAND = Decimal(1_000_000), Decimal(1_000)


@dataclass(frozen=True, slots=True)
class InputBounds:
    """What a call's body says about its input beyond its bytes: the tokens Anthropic adds
    (``extra_tokens``), what the bytes do not bound at all (``unbounded``, named for people),
    the web searches it may make (``None``: a search tool without ``max_uses``), and output
    beyond ``max_tokens`` (a thinking budget above it)."""

    extra_tokens: int = 0
    unbounded: tuple[str, ...] = ()
    web_searches: int | None = 0
    extra_output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The most a call can cost: tokens and USD, at ``price``. ``uncapped`` and
    ``unpriced_fees`` say what it could not bound for want of an operator's cap; under a
    budget, such a call is refused."""

    tokens: int
    usd: Decimal
    uncapped: str = ""
    unpriced_fees: str = ""
    price: ModelPrice | None = field(default=None, compare=False, repr=False)


class UnboundedCall(BadRequest):
    """The call may use more than its body shows, and no cap bounds it under the caller's
    budget."""

    code = "unbounded_call"


def model_price(*, model: str, at: datetime) -> ModelPrice:
    """The model's price in force at ``at``; ``ModelNotPriced`` (naming the priced models)
    when it has none."""
    price = price_for(model=model, at=at) if len(model) <= 100 else None
    if price is not None:
        return price
    priced = priced_models(at=at)
    shown = model if len(model) <= 100 else f"{model[:40]}… ({len(model)} characters)"
    raise ModelNotPriced(
        f"the model {shown!r} has no price on this console, so calls to it are refused; "
        f"an operator can price it in the admin. Priced: {', '.join(priced)}",
        details={"model": [f"{shown} has no price."], "priced_models": priced},
    )


def worst_case(
    *, model: str, body_bytes: int, max_tokens: int, inputs: InputBounds | None = None
) -> WorstCase:
    """The most a call can use and cost (see the module's docstring); ``ModelNotPriced`` for
    a model without a price."""
    inputs = inputs or InputBounds()
    price = model_price(model=model, at=timezone.now())
    input_tokens, uncapped = body_bytes + min(inputs.extra_tokens, MAX_COUNT), ""
    if inputs.unbounded:
        cap = settings.GATEWAY_UNBOUNDED_INPUT_TOKENS
        input_tokens += cap
        if not cap:
            uncapped = ", ".join(inputs.unbounded)
    searches, unpriced_fees = inputs.web_searches, ""
    if searches is not None:
        searches = min(searches, MAX_COUNT)  # a caller's max_uses may be any number
    if searches is None:
        searches = settings.GATEWAY_UNBOUNDED_SERVER_TOOL_USES
        if not searches:
            unpriced_fees = "a web_search tool without max_uses"
    dearest_input = max(
        price.input_per_mtok,
        price.cache_write_per_mtok,
        price.cache_write_1h_per_mtok,
        price.cache_read_per_mtok,
    )
    output_tokens = max_tokens + min(inputs.extra_output_tokens, MAX_COUNT)
    usd = (
        input_tokens * dearest_input + output_tokens * price.output_per_mtok
    ) / _MILLION + searches * price.web_search_per_1k / _THOUSAND
    return WorstCase(
        input_tokens + output_tokens,
        usd.quantize(Decimal("0.00000001")),
        uncapped,
        unpriced_fees,
        price,
    )
