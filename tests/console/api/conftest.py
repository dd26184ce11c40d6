"""Helpers for the REST API's tests: keys with chosen scopes, the error shape, query counts."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient


@pytest.fixture
def constant_queries(django_assert_num_queries):
    """``constant_queries(client, url, add_more)``: the list at ``url`` costs as many queries
    once ``add_more()`` has added rows as it did before (no query per row)."""

    def check(client: APIClient, url: str, add_more) -> None:
        assert client.get(url).status_code == 200  # warm: last-used stamps, quota rows
        with CaptureQueriesContext(connection) as before:
            assert client.get(url).status_code == 200
        add_more()
        with django_assert_num_queries(len(before.captured_queries)):
            response = client.get(url)
        assert response.status_code == 200

    return check


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    shape = {"code", "message", "details"}
    if response.status_code == 429:  # the seconds to wait, beside the code as clients look for it
        shape.add("retry_after")
        assert body["error"]["retry_after"] == body["error"]["details"]["retry_after"], body
    assert set(body["error"]) == shape, body
    return body["error"]
