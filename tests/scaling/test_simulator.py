"""The simulator: built-in trace shapes, CSV traces and their errors, a replay through the
policy on simulated time, its SVG, and the operators' endpoint that runs it without saving."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from scaling.models import ScalingRule
from scaling.policy import Rule, Step
from scaling.simulator import (
    MAX_TRACE_POINTS,
    TraceError,
    TracePoint,
    simulate,
    simulation_svg,
    trace_from_csv,
    trace_shape,
)
from tests.console.api.conftest import error_of

SIMULATE = "/api/v1/scaling/simulate"


# --- Traces --------------------------------------------------------------------------------------


def test_a_ramp_climbs_in_a_straight_line():
    trace = trace_shape("ramp", low=0, high=1000, duration_seconds=100, step_seconds=10)

    assert [p.seconds for p in trace] == [float(10 * i) for i in range(11)]
    assert [p.sessions for p in trace] == [100 * i for i in range(11)]


def test_a_spike_jumps_for_its_length_then_falls_back():
    trace = trace_shape(
        "spike",
        low=10,
        high=900,
        duration_seconds=600,
        step_seconds=60,
        spike_at_seconds=120,
        spike_seconds=180,
    )

    assert [p.sessions for p in trace] == [10, 10, 900, 900, 900, 10, 10, 10, 10, 10, 10]


def test_a_daily_cycle_peaks_at_its_hour_and_bottoms_twelve_hours_later():
    trace = trace_shape("daily", low=100, high=2100, step_seconds=3600, peak_hour=14)

    by_hour = {int(p.seconds // 3600): p.sessions for p in trace}
    assert len(trace) == 25  # a whole day, both ends
    assert by_hour[14] == 2100
    assert by_hour[2] == 100
    assert by_hour[8] == by_hour[20] == 1100


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("sawtooth", {}, "unknown shape 'sawtooth'; the shapes are ramp, spike, daily"),
        ("ramp", {"low": -1}, "never negative"),
        ("ramp", {"step_seconds": 0}, "must be positive"),
        ("ramp", {"duration_seconds": 10**6, "step_seconds": 1}, "more than 10000"),
    ],
)
def test_a_bad_shape_is_refused_in_plain_words(name, params, message):
    with pytest.raises(TraceError, match=message):
        trace_shape(name, **params)


def test_a_csv_trace_with_a_header_starts_at_zero():
    text = "time,sessions\n100,5\n130, 20\n\n190,7\n"

    assert trace_from_csv(text) == (TracePoint(0, 5), TracePoint(30, 20), TracePoint(90, 7))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the CSV has no rows"),
        ("seconds,sessions\n", "the CSV has no rows"),
        ("0,1\n30\n", "row 2: expected 2 columns"),
        ("0,1\nsoon,2\n", "row 2: seconds 'soon' is not a number"),
        ("0,1\n30,-4\n", "row 2: sessions '-4' is not a whole number"),
        ("0,1\n30,2.5\n", "row 2: sessions '2.5' is not a whole number"),
        ("0,1\n30,2\n30,3\n", "row 3: the time 30 does not come after"),
        ("0,1\nnan,2\n", "row 2: seconds 'nan' is not a number"),
    ],
)
def test_a_bad_csv_says_which_row_and_why(text, message):
    with pytest.raises(TraceError, match=message):
        trace_from_csv(text)


def test_a_csv_longer_than_the_limit_is_refused():
    text = "\n".join(f"{i},1" for i in range(MAX_TRACE_POINTS + 1))

    with pytest.raises(TraceError, match=f"at most {MAX_TRACE_POINTS}"):
        trace_from_csv(text)


# --- Replay --------------------------------------------------------------------------------------


def test_a_ramp_grows_the_pool_within_its_limits():
    rule = Rule(min_agents=2, max_agents=40, scale_up_cooldown_seconds=60)
    trace = trace_shape("ramp", low=100, high=5000, duration_seconds=1800, step_seconds=30)

    result = simulate(rule=rule, trace=trace)

    assert len(result.points) == 61  # every 30 s, both ends
    assert result.points[0].agents >= 2
    assert result.points[-1].agents == 40  # the maximum; 50 would carry 5000
    assert all(2 <= p.agents <= 40 for p in result.points)
    assert all(m.direction == "scale_up" for m in result.moves)
    gaps = [b.seconds - a.seconds for a, b in zip(result.moves, result.moves[1:], strict=False)]
    assert min(gaps) >= 60
    summary = result.summary
    assert summary["peak_agents"] == 40
    assert summary["peak_sessions"] == 5000
    assert summary["overloaded_evaluations"] > 0  # the maximum is too low for the peak
    assert "above the scale-up threshold" in result.moves[0].reason


def test_a_spike_is_followed_up_and_then_down_after_the_cooldown():
    rule = Rule(
        min_agents=1,
        max_agents=100,
        scale_up_steps=(Step(1000, "percent", 60),),
        scale_down_steps=(Step(100, "percent", 60),),
        scale_down_cooldown_seconds=300,
    )
    trace = trace_shape(
        "spike",
        low=100,
        high=5000,
        duration_seconds=1800,
        step_seconds=30,
        spike_at_seconds=300,
        spike_seconds=300,
    )

    result = simulate(rule=rule, trace=trace)

    up = [m for m in result.moves if m.direction == "scale_up"]
    down = [m for m in result.moves if m.direction == "scale_down"]
    assert up[0].seconds == 300 and up[-1].to_agents == 50
    assert down and down[0].seconds >= up[-1].seconds + 300
    assert result.points[-1].agents == 1


def test_a_saved_or_unsaved_rule_replays_alike():
    rule = ScalingRule(min_agents=1, max_agents=20, target_sessions_per_agent=50)
    trace = trace_shape("daily", low=10, high=900, step_seconds=1800)

    assert simulate(rule=rule, trace=trace) == simulate(rule=Rule.of(rule), trace=trace)


def test_a_replay_too_long_for_the_interval_is_refused():
    trace = (TracePoint(0, 1), TracePoint(7 * 86_400, 1))

    with pytest.raises(TraceError, match="evaluations"):
        simulate(rule=replace(Rule(), evaluation_interval_seconds=5), trace=trace)


def test_the_svg_draws_three_series_with_escaped_text_and_no_script():
    trace = trace_shape("spike", low=0, high=300, duration_seconds=600, step_seconds=30)
    result = simulate(rule=Rule(min_agents=0, max_agents=10), trace=trace)

    svg = simulation_svg(result, title='Pool "a" <script>alert(1)</script> & co')

    root = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) >= 3
    assert "<script" not in svg
    assert "&lt;script&gt;" in svg
    labels = [t.text for t in root.iter(f"{ns}text")]
    assert {"Sessions", "Agents", "Utilization"} <= set(labels)
    assert "href" not in svg


def test_the_svg_marks_round_times_and_leaves_the_title_to_the_page():
    trace = trace_shape("daily", low=10, high=300)
    result = simulate(rule=Rule(min_agents=0, max_agents=10), trace=trace)

    root = ET.fromstring(simulation_svg(result, title="support-pool"))
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "support-pool" not in labels  # drawn, it sat on the Sessions label
    assert [x for x in labels if x and ":" in x] == [f"{h}:00" for h in range(0, 25, 3)]


# --- The endpoint --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_operators_simulate_a_shape_through_unsaved_settings(operator_client):
    body = {
        "rule": {"min_agents": 1, "max_agents": 30, "target_sessions_per_agent": 50},
        "trace": {"shape": "ramp", "low": 0, "high": 1000, "duration_seconds": 600},
    }

    response = operator_client.post(SIMULATE, body, format="json")

    assert response.status_code == 200, response.content
    data = response.json()
    assert set(data) == {"points", "decisions", "summary", "svg"}
    assert len(data["points"]) == 21
    assert data["points"][-1] == {
        "seconds": 600.0,
        "sessions": 1000,
        "agents": data["points"][-1]["agents"],
        "utilization": data["points"][-1]["utilization"],
    }
    assert data["summary"]["peak_sessions"] == 1000
    assert data["decisions"][0]["direction"] == "scale_up"
    assert data["svg"].startswith("<svg")
    assert not ScalingRule.objects.exists()


@pytest.mark.django_db
def test_operators_simulate_a_csv_trace_with_the_default_rule(operator_client):
    body = {"trace": {"csv": "seconds,sessions\n0,500\n60,7500\n600,7500\n"}}

    response = operator_client.post(SIMULATE, body, format="json")

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["points"][0]["agents"] == 10  # the default minimum
    # Doubling at most every cooldown (100 % a period, 120 s apart): 20, 40, then the 75 the
    # Hypercore example calls for.
    moves = [(d["seconds"], d["to_agents"]) for d in data["decisions"]]
    assert moves == [(60.0, 20), (180.0, 40), (300.0, 75)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"trace": {"csv": "0,1\n0,2\n"}}, "csv"),
        ({"trace": {"shape": "ramp", "csv": "0,1"}}, "non_field_errors"),
        ({"trace": {}}, "non_field_errors"),
        ({"trace": {"csv": "0,1", "low": 4}}, "csv"),
        ({"trace": {"shape": "zigzag"}}, "shape"),
        ({"rule": {"min_agents": 5, "max_agents": 2}, "trace": {"shape": "ramp"}}, "min_agents"),
        (
            {"rule": {"scale_down_threshold": "0.9"}, "trace": {"shape": "ramp"}},
            "scale_down_threshold",
        ),
        (
            {"rule": {"evaluation_interval_seconds": 5}, "trace": {"csv": "0,1\n604800,1"}},
            "trace",
        ),
    ],
)
def test_a_bad_simulation_request_is_refused_in_the_error_shape(operator_client, body, field):
    response = operator_client.post(SIMULATE, body, format="json")

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert field in str(error["details"]), error


@pytest.mark.django_db
def test_only_operators_may_simulate(user, scoped_client):
    response = scoped_client(user, "read", "write").post(
        SIMULATE, {"trace": {"shape": "ramp"}}, format="json"
    )

    assert response.status_code == 403
    assert error_of(response)["details"] == {"required_scope": "admin"}
