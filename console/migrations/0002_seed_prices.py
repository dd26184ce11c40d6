"""Seed the price table with Anthropic's published list prices (USD per million tokens)."""

from datetime import date
from decimal import Decimal

from django.db import migrations

# Anthropic's list prices, USD per million tokens: model, input, output, 5-minute cache write,
# cache read. Haiku 5.5 is priced at its tier for prompts up to 100k tokens.
PRICES = [
    ("claude-fable-5-1", "10", "50", "12.50", "0.25"),
    ("claude-mythos-5-1", "10", "50", "12.50", "0.25"),
    ("claude-fable-5", "10", "50", "12.50", "1"),
    ("claude-mythos-5", "10", "50", "12.50", "1"),
    ("claude-opus-5-5", "4", "20", "5", "0.20"),
    ("claude-opus-5", "5", "25", "6.25", "0.50"),
    ("claude-opus-4-8", "5", "25", "6.25", "0.50"),
    ("claude-opus-4-7", "5", "25", "6.25", "0.50"),
    ("claude-opus-4-6", "5", "25", "6.25", "0.50"),
    ("claude-opus-4-5", "5", "25", "6.25", "0.50"),
    ("claude-opus-4-1", "15", "75", "18.75", "1.50"),
    ("claude-opus-4", "15", "75", "18.75", "1.50"),
    ("claude-sonnet-5-5", "2", "10", "2.50", "0.10"),
    ("claude-sonnet-5", "2", "10", "2.50", "0.20"),
    ("claude-sonnet-4-6", "3", "15", "3.75", "0.30"),
    ("claude-sonnet-4-5", "3", "15", "3.75", "0.30"),
    ("claude-sonnet-4", "3", "15", "3.75", "0.30"),
    ("claude-haiku-5-5", "0.10", "0.50", "0.125", "0.01"),
    ("claude-haiku-4-5", "1", "5", "1.25", "0.10"),
    ("claude-3-5-haiku", "0.80", "4", "1", "0.08"),
    ("offline", "0", "0", "0", "0"),
]
EFFECTIVE = date(2026, 11, 1)


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("console", "ModelPrice")
    for model, inp, out, write, read in PRICES:
        ModelPrice.objects.get_or_create(
            model=model,
            effective_from=EFFECTIVE,
            defaults={
                "input_per_mtok": Decimal(inp),
                "output_per_mtok": Decimal(out),
                "cache_write_per_mtok": Decimal(write),
                "cache_read_per_mtok": Decimal(read),
            },
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("console", "ModelPrice")
    ModelPrice.objects.filter(effective_from=EFFECTIVE, model__in=[p[0] for p in PRICES]).delete()


class Migration(migrations.Migration):
    dependencies = [("console", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
