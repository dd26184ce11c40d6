"""Prices for 1-hour cache writes and web searches, and the ledger columns they are charged from.

Today's list prices fill the new columns of every price row: a 1-hour cache write costs 2 x the
input rate, and a web search $10 per 1,000 (the 5-minute write stays ``cache_write_per_mtok``).
"""

from decimal import Decimal
from importlib import import_module

from django.core.validators import MinValueValidator
from django.db import migrations, models

WEB_SEARCH_PER_1K = Decimal(10)


def seed(apps, schema_editor):
    """The seeded prices of 0002 with every column (for tests that flush the table too), and
    today's 1-hour and web search prices on every row that lacks them."""
    first = import_module("console.migrations.0002_seed_prices")
    ModelPrice = apps.get_model("console", "ModelPrice")
    for model, inp, out, write, read in first.PRICES:
        ModelPrice.objects.get_or_create(
            model=model,
            effective_from=first.EFFECTIVE,
            defaults={
                "input_per_mtok": Decimal(inp),
                "output_per_mtok": Decimal(out),
                "cache_write_per_mtok": Decimal(write),
                "cache_write_1h_per_mtok": 2 * Decimal(inp),
                "cache_read_per_mtok": Decimal(read),
                "web_search_per_1k": WEB_SEARCH_PER_1K if model != "offline" else Decimal(0),
            },
        )
    for price in ModelPrice.objects.filter(cache_write_1h_per_mtok__isnull=True):
        price.cache_write_1h_per_mtok = 2 * price.input_per_mtok
        price.save(update_fields=["cache_write_1h_per_mtok"])
    ModelPrice.objects.filter(web_search_per_1k__isnull=True).exclude(model="offline").update(
        web_search_per_1k=WEB_SEARCH_PER_1K
    )
    ModelPrice.objects.filter(web_search_per_1k__isnull=True).update(web_search_per_1k=0)


def _price(verbose_name, help_text, null):
    return models.DecimalField(
        verbose_name,
        max_digits=12,
        decimal_places=6,
        null=null,
        validators=[MinValueValidator(0)],
        help_text=help_text,
    )


_1H = ("cache write (1 hour) per Mtok", "Writes to the 1-hour cache (Anthropic: 2 times input).")
_SEARCH = (
    "web search per 1,000",
    "USD per 1,000 web searches (usage.server_tool_use.web_search_requests).",
)


class Migration(migrations.Migration):
    dependencies = [("console", "0008_token_families")]

    operations = [
        migrations.AddField("modelprice", "cache_write_1h_per_mtok", _price(*_1H, null=True)),
        migrations.AddField("modelprice", "web_search_per_1k", _price(*_SEARCH, null=True)),
        migrations.RunPython(seed, migrations.RunPython.noop),
        migrations.AlterField("modelprice", "cache_write_1h_per_mtok", _price(*_1H, null=False)),
        migrations.AlterField("modelprice", "web_search_per_1k", _price(*_SEARCH, null=False)),
        migrations.AlterField(
            "modelprice",
            "cache_write_per_mtok",
            _price(
                "cache write (5 minutes) per Mtok",
                "Writes to the 5-minute cache (Anthropic: 1.25 times input).",
                null=False,
            ),
        ),
        migrations.AddField(
            "usagerecord",
            "cache_creation_1h_input_tokens",
            models.PositiveIntegerField(
                default=0,
                db_default=0,
                help_text="The part of the cache writes priced at the 1-hour rate.",
            ),
        ),
        migrations.AddField(
            "usagerecord",
            "web_search_requests",
            models.PositiveIntegerField(default=0, db_default=0),
        ),
    ]
