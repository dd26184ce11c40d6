"""Usage reports through the API: own usage for users, anyone's for operators, grouped as asked,
and CSV with exactly the JSON's rows."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime

import pytest

from console.services import TokenUsage, usage_record
from tests.console.api.conftest import error_of

pytestmark = pytest.mark.django_db

USAGE = "/api/v1/usage"
SONNET, HAIKU = "claude-sonnet-5-5", "claude-haiku-5-5"
RANGE = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-03T00:00:00Z"}


def spend(user, day: int, hour: int, model: str = SONNET, tokens: int = 1000) -> None:
    usage_record(
        user_id=user.pk,
        model=model,
        usage=TokenUsage(input_tokens=tokens, output_tokens=tokens // 10),
        at=datetime(2026, 3, day, hour, 30, tzinfo=UTC),
    )


@pytest.fixture(autouse=True)
def _priced_in_march(prices_from):
    prices_from(date(2026, 1, 1))  # the rows here are written in March 2026


@pytest.fixture
def spent(user, outsider):
    spend(user, 1, 10)
    spend(user, 1, 11, HAIKU, 500)
    spend(user, 2, 9)
    spend(outsider, 1, 10, tokens=9000)


def test_a_user_sees_only_their_own_usage_by_day(user, client_for, spent):
    body = client_for(user).get(USAGE, {**RANGE, "group_by": "day"}).json()

    assert [(r["day"], r["requests"]) for r in body["rows"]] == [
        ("2026-03-01", 2),
        ("2026-03-02", 1),
    ]
    assert body["rows"][0]["input_tokens"] == 1500


def test_group_by_model_and_user(user, outsider, operator, scoped_client, spent):
    by_model = scoped_client(user).get(USAGE, {**RANGE, "group_by": "model"}).json()["rows"]
    assert {r["model"]: r["requests"] for r in by_model} == {SONNET: 2, HAIKU: 1}

    admin = scoped_client(operator, "read", "admin")
    by_user = admin.get(USAGE, {**RANGE, "group_by": "user"}).json()["rows"]
    assert {r["user_id"] for r in by_user} == {user.pk, outsider.pk}


def test_an_outsider_cannot_read_another_users_usage(user, outsider, client_for, spent):
    response = client_for(outsider).get(USAGE, {**RANGE, "user_id": user.pk})
    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"


def test_a_staff_key_without_admin_sees_only_its_own(operator, user, scoped_client, spent):
    rows = scoped_client(operator, "read").get(USAGE, RANGE).json()["rows"]
    assert rows == []


def test_an_operator_reads_one_user_or_everyone(user, outsider, operator, scoped_client, spent):
    admin = scoped_client(operator, "read", "admin")
    one = admin.get(USAGE, {**RANGE, "user_id": outsider.pk, "group_by": "hour"}).json()["rows"]
    assert [(r["hour"], r["input_tokens"]) for r in one] == [("2026-03-01T10:00:00Z", 9000)]
    everyone = admin.get(USAGE, {**RANGE, "group_by": "day"}).json()["rows"]
    assert everyone[0]["requests"] == 3


def test_csv_holds_exactly_the_json_rows(user, client_for, spent):
    client = client_for(user)
    for group_by in ("agent", "model", "day", "hour"):
        query = {**RANGE, "group_by": group_by}
        rows = client.get(USAGE, query).json()["rows"]
        response = client.get(USAGE, {**query, "format": "csv"})

        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/csv")
        reader = csv.DictReader(io.StringIO(response.content.decode()))
        expected = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
        assert list(reader) == expected
        assert reader.fieldnames == list(rows[0])


def test_csv_of_no_usage_is_a_header_row(user, client_for):
    response = client_for(user).get(USAGE, {**RANGE, "group_by": "model", "format": "csv"})
    assert response.content.decode().splitlines() == [
        "model,requests,input_tokens,output_tokens,cache_creation_input_tokens,"
        "cache_read_input_tokens,total_tokens,cost_usd"
    ]


def test_bad_parameters_answer_in_the_error_shape_even_for_csv(user, client_for):
    client = client_for(user)
    backwards = client.get(USAGE, {"start": RANGE["end"], "end": RANGE["start"]})
    assert backwards.status_code == 400
    assert "end" in error_of(backwards)["details"]
    bad_group = client.get(USAGE, {**RANGE, "group_by": "week", "format": "csv"})
    assert bad_group.status_code == 400
    assert bad_group["Content-Type"] == "application/json"
    assert "group_by" in error_of(bad_group)["details"]


def test_a_write_only_key_cannot_read_usage(user, scoped_client):
    assert scoped_client(user, "write").get(USAGE).status_code == 403
