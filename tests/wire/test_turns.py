"""``wire.turns``: the fields of a turn, declared once and imported without Django."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agents import serializers
from agents.runtime.config import RuntimeConfig
from wire import turns

PROJECT = {"django", "rest_framework", "channels", "agents", "console", "scaling", "vmdriver"}


def test_the_wire_layer_imports_neither_django_nor_the_project():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, wire.turns; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not {name.partition(".")[0] for name in loaded} & PROJECT


@pytest.mark.parametrize("name", ["ChatRequestSerializer", "SendMessageSerializer"])
def test_the_serializers_bound_max_tokens_as_declared(name):
    field = getattr(serializers, name)().fields["max_tokens"]
    assert (field.min_value, field.max_value, field.default) == (
        turns.MAX_TOKENS_MIN,
        turns.MAX_TOKENS_MAX,
        turns.MAX_TOKENS_DEFAULT,
    )


def test_the_runtime_defaults_to_the_declared_model(monkeypatch):
    monkeypatch.setenv("AGENT_GATEWAY_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AGENT_MODEL", raising=False)
    assert RuntimeConfig.from_env().model == turns.DEFAULT_MODEL
