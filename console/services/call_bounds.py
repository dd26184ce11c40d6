"""What a gateway call may cost at most: its model's price (none: the call is refused), and
its worst case, from what its body bounds and the operator's caps for what it does not (see
``limits``, which reserves it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from console.models import ModelPrice
from console.services.ledger import MAX_COUNT, ModelNotPriced, price_for, priced_models
from plumbing.errors import BadRequest

__all__ = [
    "InputBounds",
    "UnboundedCall",
    "WorstCase",
    "input_bounds",
    "model_price",
    "worst_case",
]

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


# --- What a body bounds ----------------------------------------------------------------------

# Bounds, not estimates, of what Anthropic adds to a body's own tokens: its tool-use prompt
# (a few hundred tokens), each tool's rendering beyond its JSON, the prompt of a tool it defines
# and the caller runs (computer use's is about 700), and one inline image (at most about 1,600
# tokens once resized to 1.15 megapixels, while a flat PNG can be a few hundred bytes).
_TOOL_PROMPT_TOKENS = 1_000
_PER_TOOL_TOKENS = 100
_CLIENT_TOOL_TOKENS = 2_000
_IMAGE_TOKENS = 5_000
# More tools than this are more than any agent needs, and their prompt is not bounded here.
_BOUNDED_TOOLS = 128
# Anthropic-defined tools that the caller runs: their input comes back in the body.
_CLIENT_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")
_WEB_SEARCH = "web_search_"
# Keys of a body (besides tools) that bring in input the body does not hold.
_UNBOUNDED_KEYS = ("mcp_servers", "container")


def input_bounds(body: dict[str, Any], raw: bytes) -> InputBounds:
    """What ``body`` (parsed from ``raw``) says about its input beyond its bytes (see
    ``InputBounds``): Anthropic's tool prompts, images, and what it does not bound at all (file
    and URL sources, PDFs, server tools, remote MCP servers, containers, very long tool
    lists)."""
    extra, unbounded, searches = 0, [], 0
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        extra += _TOOL_PROMPT_TOKENS + _PER_TOOL_TOKENS * len(tools)
        if len(tools) > _BOUNDED_TOOLS:
            unbounded.append(f"{len(tools)} tools")
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind is None or kind == "custom":
                continue
            if not isinstance(kind, str):
                unbounded.append("a tool of unknown type")
            elif kind.startswith(_CLIENT_TOOLS):
                extra += _CLIENT_TOOL_TOKENS
            else:
                unbounded.append(f"the server tool {kind[:40]}")
                if kind.startswith(_WEB_SEARCH) and searches is not None:
                    uses = tool.get("max_uses")
                    ok = isinstance(uses, int) and not isinstance(uses, bool) and uses >= 0
                    searches = searches + uses if ok else None
    unbounded += [f"{key}" for key in _UNBOUNDED_KEYS if body.get(key)]
    images, sources = _sources(body) if _may_source(raw) else (0, set())
    extra += images * _IMAGE_TOKENS
    unbounded += sorted(sources)
    thinking = body.get("thinking")
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    output = budget - body["max_tokens"] if isinstance(budget, int) else 0
    return InputBounds(
        extra_tokens=extra,
        unbounded=tuple(dict.fromkeys(unbounded)),
        web_searches=searches,
        extra_output_tokens=max(0, output),
    )


def _may_source(raw: bytes) -> bool:
    """Whether the body's text could hold a source or an upload at all: walking its blocks costs
    as much as parsing it, and most bodies are text. A key can hide only behind an escape."""
    return b'"source"' in raw or b"container_upload" in raw or b"\\u" in raw


def _sources(body: dict[str, Any]) -> tuple[int, set[str]]:
    """Inline images in the system prompt and messages, and what else they source from
    outside the body (file or URL sources, PDFs, container uploads). Walks every block: the
    body's depth is bounded."""
    images, outside = 0, set()
    stack: list[Any] = [body.get("system"), body.get("messages")]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        kind, source = item.get("type"), item.get("source")
        if kind == "container_upload":
            outside.add("a container upload")
        if isinstance(source, dict):
            where = source.get("type")
            if where == "base64" and kind == "image":
                images += 1
            elif where in ("text", "content"):
                pass
            elif where == "base64":
                outside.add("a PDF document")  # its pages, each an image and its text
            else:
                outside.add(f"a {str(where)[:20]}-sourced {str(kind)[:20]}")
        stack.extend(value for value in item.values() if isinstance(value, list | dict))
    return images, outside
