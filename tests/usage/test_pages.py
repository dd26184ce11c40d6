"""The usage pages: who sees what, the figures of each grouping, the CSV of exactly the table,
fragments for htmx, and a fixed number of queries whatever the ledger holds."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from agents.models import Agent
from console.services import TokenUsage, usage_record

pytestmark = pytest.mark.django_db

SONNET, HAIKU = "claude-sonnet-5-5", "claude-haiku-5-5"  # $2/$10 and $0.10/$0.50 per Mtok
DAY = "range=custom&start=2026-11-10&end=2026-11-10"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def call(user, when, *, model=SONNET, agent=None, tokens_in=1_000_000, tokens_out=100_000, **more):
    return usage_record(
        user_id=user.pk,
        model=model,
        usage=TokenUsage(input_tokens=tokens_in, output_tokens=tokens_out, **more),
        agent_id=agent.pk if agent else None,
        at=when,
    )


def agent_of(user, name: str) -> Agent:
    return Agent.objects.create(
        owner=user, name=name, model=SONNET, status="running", sandbox_id=str(uuid.uuid4())
    )


class _Table(HTMLParser):
    """The rows of the usage table: each row's label and its cells' exact values."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_body = self._in_table = False
        self._label: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "usage-table" in (attrs.get("class") or ""):
            self._in_table = True
        elif self._in_table and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append([])
        elif self._in_body and tag == "td":
            if "data-value" in attrs:
                self.rows[-1].append(attrs["data-value"])
                self._label = None
            else:
                self._label = []
        elif self._label is not None and tag == "span":
            self.rows[-1].append("".join(self._label).strip())
            self._label = []

    def handle_endtag(self, tag):
        if tag == "td" and self._label is not None:
            self.rows[-1].append("".join(self._label).strip())
            self._label = None
        elif tag == "tbody":
            self._in_body = self._in_table = False

    def handle_data(self, data):
        if self._label is not None:
            self._label.append(data)


def table_rows(html: str) -> list[list[str]]:
    parser = _Table()
    parser.feed(html)
    return parser.rows


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def ledger(user, bob):
    """Alice: a Sonnet call through her agent "scout" ($3.00) and a Haiku call without an agent
    ($0.60) on November 10; Bob: a Sonnet call through "digger" ($3.20 with its cache reads) and
    another ($3.00) on November 11."""
    scout, digger = agent_of(user, "scout"), agent_of(bob, "digger")
    call(user, at(10, 9, 15), agent=scout)
    call(user, at(10, 14, 40), model=HAIKU, tokens_out=1_000_000)
    call(bob, at(10, 11, 5), agent=digger, cache_read_input_tokens=2_000_000)  # + $0.20
    call(bob, at(11, 10), agent=digger)
    return scout, digger


def page(client, who, query: str = DAY, **headers):
    client.force_login(who)
    response = client.get(f"/usage/?{query}", **headers)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


# --- Who sees what -------------------------------------------------------------------------------


def test_signing_in_is_required(client):
    response = client.get("/usage/")
    assert response.status_code == 302 and "login" in response["Location"]


def test_a_user_sees_only_their_own_usage(client, user, bob, ledger):
    html = page(client, user, f"{DAY}&group_by=agent&user={bob.pk}")
    rows = table_rows(html)
    assert [row[0] for row in rows] == ["scout", "no agent (API)"]
    assert "digger" not in html and "bob" not in html
    assert "Top users" not in html


def test_an_operator_sees_everyone_and_one_user_when_asked(client, operator, user, bob, ledger):
    rows = table_rows(page(client, operator, f"{DAY}&group_by=user"))
    assert [(row[0], row[-1]) for row in rows] == [("alice", "3.60000000"), ("bob", "3.20000000")]
    html = page(client, operator, f"{DAY}&group_by=user&user={bob.pk}")
    assert [row[0] for row in table_rows(html)] == ["bob"]


# --- Figures -------------------------------------------------------------------------------------


def test_grouping_by_model_adds_up_tokens_by_kind_and_cost(client, operator, ledger):
    rows = table_rows(page(client, operator, f"{DAY}&group_by=model"))
    # model, calls, input, output, cache write, cache read, total tokens, cost
    assert rows == [
        [SONNET, "2", "2000000", "200000", "0", "2000000", "4200000", "6.20000000"],
        [HAIKU, "1", "1000000", "1000000", "0", "0", "2000000", "0.60000000"],
    ]


def test_grouping_by_agent_names_each_agent_and_calls_without_one(client, operator, ledger):
    rows = table_rows(page(client, operator, f"{DAY}&group_by=agent"))
    assert [(row[0], row[1].split(" · ")[0], row[-1]) for row in rows] == [
        ("digger", "bob", "3.20000000"),
        ("scout", "alice", "3.00000000"),
        ("no agent (API)", "alice", "0.60000000"),
    ]


def test_grouping_by_day_and_by_hour_over_two_days(client, operator, ledger):
    two_days = "range=custom&start=2026-11-10&end=2026-11-11"
    rows = table_rows(page(client, operator, f"{two_days}&group_by=day"))
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("2026-11-10", "3", "6.80000000"),
        ("2026-11-11", "1", "3.00000000"),
    ]
    rows = table_rows(page(client, operator, f"{two_days}&group_by=hour"))
    assert [(row[0], row[-1]) for row in rows] == [
        ("2026-11-10 09:00", "3.00000000"),
        ("2026-11-10 11:00", "3.20000000"),
        ("2026-11-10 14:00", "0.60000000"),
        ("2026-11-11 10:00", "3.00000000"),
    ]


def test_the_chart_stacks_each_models_cost_in_its_bar(client, operator, ledger):
    html = page(client, operator, "range=custom&start=2026-11-10&end=2026-11-12")
    titles = re.findall(r"<rect class=\"usage-s\d\"[^>]*><title>([^<]*)</title>", html)
    assert "Nov 10 · claude-sonnet-5-5: $6.20" in titles
    assert "Nov 10 · claude-haiku-5-5: $0.6000" in titles
    assert "Nov 11 · claude-sonnet-5-5: $3.00" in titles
    assert "<script" not in html.split("</head>")[1]


def test_agent_names_in_charts_and_tables_are_escaped(client, operator, user):
    agent = agent_of(user, "<b>x</b>")
    call(user, at(10, 9), agent=agent)
    html = page(client, operator, f"{DAY}&group_by=agent")
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_names_in_the_user_filter_are_escaped_and_the_chosen_one_selected(
    client, operator, make_user
):
    eve = make_user("<i>eve</i>")
    html = page(client, operator, f"{DAY}&user={eve.pk}")
    assert "<i>eve</i>" not in html
    assert f'<option value="{eve.pk}" selected>&lt;i&gt;eve&lt;/i&gt;</option>' in html


# --- CSV -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["user", "agent", "model", "day", "hour"])
def test_the_csv_holds_exactly_the_rows_of_the_table(client, operator, ledger, group_by):
    query = f"range=custom&start=2026-11-10&end=2026-11-11&group_by={group_by}"
    shown = table_rows(page(client, operator, query))
    response = client.get(f"/usage/?{query}&format=csv")
    assert response["Content-Type"].startswith("text/csv")
    header, *rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert header[-7:] == [
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "total_tokens",
        "cost_usd",
    ]
    assert len(rows) == len(shown) > 0
    for table_row, csv_row in zip(shown, rows, strict=True):
        assert csv_row[-7:] == table_row[-7:]
        label = {"user": 1, "agent": 1}.get(group_by, 0)
        expected = table_row[0] if group_by != "hour" else table_row[0].replace(" ", "T")
        assert csv_row[label].startswith(expected)


def test_the_csv_link_carries_the_query_of_the_page(client, operator, ledger):
    html = page(client, operator, f"{DAY}&group_by=model&rows=100")
    link = re.search(r'href="\?([^"]*)" download data-csv', html).group(1).replace("&amp;", "&")
    assert "group_by=model" in link and "format=csv" in link and "start=2026-11-10" in link


def test_a_row_limit_hides_the_cheapest_groups_in_the_table_and_the_csv(client, operator, ledger):
    query = f"{DAY}&group_by=agent&rows=100"
    assert len(table_rows(page(client, operator, query))) == 3
    for n in range(3, 105):
        call(operator, at(10, 12), agent=agent_of(operator, f"a{n}"), tokens_in=n, tokens_out=0)
    html = page(client, operator, query)
    assert len(table_rows(html)) == 100 and "5 more groups not shown" in html
    rows = list(csv.reader(io.StringIO(client.get(f"/usage/?{query}&format=csv").content.decode())))
    assert len(rows) == 101


# --- htmx ----------------------------------------------------------------------------------------


def test_htmx_gets_the_report_fragment_and_a_browser_the_page(client, operator, ledger):
    full = page(client, operator, DAY)
    assert "<html" in full and 'id="usage-report"' in full and 'hx-get="/usage/"' in full
    fragment = page(client, operator, DAY, HTTP_HX_REQUEST="true")
    assert "<html" not in fragment and fragment.lstrip().startswith('<div id="usage-report"')
    boosted = page(client, operator, DAY, HTTP_HX_REQUEST="true", HTTP_HX_BOOSTED="true")
    assert "<html" in boosted


def test_a_custom_range_that_ends_before_it_starts_says_so(client, user):
    html = page(client, user, "range=custom&start=2026-11-15&end=2026-11-10")
    assert "ends before it starts" in html


# --- Queries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["user", "agent", "model", "day", "hour"])
def test_the_page_asks_a_fixed_number_of_queries(
    client, operator, user, bob, ledger, group_by, django_assert_num_queries
):
    # An unaligned range, so every piece is read: days, hours and both edges of the ledger.
    query = f"group_by={group_by}&range=7d"
    now = datetime.now(UTC)
    call(user, now - timedelta(days=2), agent=agent_of(user, "recent"))
    client.force_login(operator)
    client.get(f"/usage/?{query}", HTTP_HX_REQUEST="true")  # warm the session
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as before:
        client.get(f"/usage/?{query}", HTTP_HX_REQUEST="true")
    for n in range(20):
        agent = agent_of(bob if n % 2 else user, f"more{n}")
        call(bob if n % 2 else user, now - timedelta(hours=n * 7), agent=agent, model=HAIKU)
    with django_assert_num_queries(len(before.captured_queries)):
        response = client.get(f"/usage/?{query}", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert len(before.captured_queries) <= 22


def test_tokens_at_no_cost_are_shown_as_tokens_not_as_nothing_spent(client, user):
    call(user, at(10, 9), model="offline", tokens_in=1_200_000, tokens_out=0)

    html = page(client, user)

    assert "Nothing spent" not in html
    assert "1.2M tokens, at no recorded cost" in html
    assert "the offline model" in html


def test_a_range_without_calls_says_nothing_was_spent(client, user):
    assert "Nothing spent" in page(client, user)
