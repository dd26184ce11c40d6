"""Seed the price table with Anthropic's published list prices (USD per million tokens)."""

from datetime import date
from decimal import Decimal

from django.db import migrations

# model, input, output, cache write (5 minutes), cache read
PRICES = [
    ("claude-opus-4-1", "15", "75", "18.75", "1.50"),
    ("claude-opus-4", "15", "75", "18.75", "1.50"),
    ("claude-sonnet-4-5", "3", "15", "3.75", "0.30"),
    ("claude-sonnet-4", "3", "15", "3.75", "0.30"),
    ("claude-3-7-sonnet", "3", "15", "3.75", "0.30"),
    ("claude-haiku-4-5", "1", "5", "1.25", "0.10"),
    ("claude-3-5-haiku", "0.80", "4", "1", "0.08"),
    ("offline", "0", "0", "0", "0"),
]
EFFECTIVE = date(2025, 10, 15)


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
