"""`/api/v1/usage/summary/`: totals equal a direct sum over the ledger, for every grouping and range."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from unittest import mock

import pytest
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate

from apps.accounts.models import Role, Workspace
from apps.accounts.services import api_key_issue
from apps.usage.models import UsageHourly, UsageRecord
from apps.usage.services import usage_rollup_rebuild
from tests.support.factories import WorkspaceFactory
from tests.support.tenancy import key_client, problem
from tests.usage.conftest import book, make_model

pytestmark = pytest.mark.django_db

START = dt.datetime(2026, 10, 30, 21, 0, tzinfo=dt.UTC)
FIELDS = ("calls", "input_tokens", "output_tokens", "cost_usd", "cache_hits", "saved_usd")


def booked_at(at: dt.datetime, model, **fields) -> UsageRecord:
    with mock.patch("django.utils.timezone.now", return_value=at):
        return book(model, **fields)


def _drop(slugs: list[str]) -> None:
    workspaces = Workspace.objects.filter(slug__in=slugs)
    UsageRecord.objects.filter(workspace__in=workspaces).delete()
    workspaces.delete()  # cascades to keys, models, providers and rollup buckets


@pytest.fixture(scope="module")
def ledger(django_db_setup, django_db_blocker):
    """Three days of calls every 17 minutes over two models, two workflows (and none), two keys (and none),
    with cache hits and failures; plus another workspace's calls that must never show.

    Written once for the module through usage_record (so the rollup is maintained as in production)
    and committed; each test still runs in its own rolled-back transaction on top.
    """
    slugs = ["summary-ledger", "summary-other"]
    with django_db_blocker.unblock():
        _drop(slugs)
        workspace, other_workspace = (WorkspaceFactory(slug=slug) for slug in slugs)
        fast, smart = make_model(workspace, "fast"), make_model(workspace, "smart")
        keys = [api_key_issue(workspace=workspace, name=f"k{n}").api_key for n in range(2)] + [None]
        workflows = [uuid.uuid4(), uuid.uuid4(), None]
        for n in range(0, 3 * 24 * 60, 17):
            cache_hit = n % 5 == 0
            booked_at(
                START + dt.timedelta(minutes=n, seconds=n % 60, microseconds=n),
                fast if n % 3 else smart,
                api_key=keys[n % 3],
                workflow_id=workflows[(n // 17) % 3],
                cache_hit=cache_hit,
                status=UsageRecord.Status.FAILED if n % 11 == 0 else UsageRecord.Status.SUCCEEDED,
                input_tokens=100 + n % 97,
                cached_input_tokens=n % 13,
                output_tokens=n % 41,
                cost_usd=Decimal("0") if cache_hit else Decimal(n % 1000) / Decimal("3") * Decimal("0.0000001"),
                saved_usd=Decimal("0.0000123457") if cache_hit else Decimal("0"),
            )
        theirs = make_model(other_workspace, "fast")
        for n in range(20):
            booked_at(START + dt.timedelta(hours=n), theirs, cost_usd=Decimal("1"))
    yield workspace
    with django_db_blocker.unblock():
        _drop(slugs)


def ledger_sums(workspace, start, end, group_by):
    key = {
        "day": TruncDate("created_at", tzinfo=dt.UTC),
        "workflow": F("workflow_id"),
        "model": F("model_alias"),
        "api_key": F("api_key"),
    }[group_by]
    rows = (
        UsageRecord.objects.filter(workspace=workspace, created_at__gte=start, created_at__lt=end)
        .annotate(group=key)
        .values("group")
        .annotate(
            calls=Count("id"),
            s_in=Sum("input_tokens"),
            s_out=Sum("output_tokens"),
            s_cost=Sum("cost_usd"),
            hits=Count("id", filter=Q(cache_hit=True)),
            s_saved=Sum("saved_usd"),
        )
    )
    out = {}
    for row in rows:
        group = row["group"]
        label = group.isoformat() if isinstance(group, dt.date) else (str(group) if group is not None else None)
        out[label] = {
            "calls": row["calls"],
            "input_tokens": row["s_in"],
            "output_tokens": row["s_out"],
            "cost_usd": format(row["s_cost"].quantize(Decimal("1e-10")), "f"),
            "cache_hits": row["hits"],
            "saved_usd": format(row["s_saved"].quantize(Decimal("1e-10")), "f"),
        }
    return out


RANGES = {
    "whole days": ("2026-10-31", "2026-11-01"),
    "partial hours at both edges": ("2026-10-30T21:17:31Z", "2026-11-02T03:44:10.5Z"),
    "inside one hour": ("2026-10-31T10:05:00Z", "2026-10-31T10:55:00Z"),
    "with an offset": ("2026-10-31T12:30:00+02:00", "2026-11-01T09:00:00-05:00"),
}


@pytest.mark.parametrize("group_by", ["day", "workflow", "model", "api_key"])
@pytest.mark.parametrize("span", list(RANGES))
def test_summary_rows_and_totals_equal_a_direct_sum_over_the_ledger(ledger, group_by, span):
    start_raw, end_raw = RANGES[span]
    client = key_client(ledger, Role.VIEWER)

    response = client.get("/api/v1/usage/summary/", {"from": start_raw, "to": end_raw, "group_by": group_by})

    assert response.status_code == 200, response.content
    body = response.json()
    start, end = dt.datetime.fromisoformat(body["from"]), dt.datetime.fromisoformat(body["to"])
    expected = ledger_sums(ledger, start, end, group_by)
    assert expected, "the range must hold calls for the comparison to mean anything"
    assert {row["key"]: {f: row[f] for f in FIELDS} for row in body["rows"]} == expected
    direct = ledger_sums(ledger, start, end, "day")
    for field in FIELDS:
        total = sum(Decimal(str(row[field])) for row in direct.values())
        assert Decimal(str(body["totals"][field])) == total, field


def test_a_bare_to_date_includes_that_whole_day(ledger):
    body = key_client(ledger).get("/api/v1/usage/summary/", {"from": "2026-10-31", "to": "2026-10-31"}).json()
    assert (body["from"], body["to"]) == ("2026-10-31T00:00:00Z", "2026-11-01T00:00:00Z")
    assert [row["key"] for row in body["rows"]] == ["2026-10-31"]


def test_by_day_rows_come_in_date_order_and_models_are_keyed_by_alias(ledger):
    client = key_client(ledger)
    days = client.get("/api/v1/usage/summary/", {"from": "2026-10-01", "to": "2026-11-30"}).json()["rows"]
    assert [row["key"] for row in days] == ["2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02"]
    models = client.get("/api/v1/usage/summary/", {"from": "2026-10-01", "to": "2026-11-30", "group_by": "model"})
    assert {row["key"] for row in models.json()["rows"]} == {"fast", "smart"}


def test_calls_without_a_workflow_or_key_are_grouped_under_a_null_key(ledger):
    client = key_client(ledger)
    for group_by in ("workflow", "api_key"):
        rows = client.get("/api/v1/usage/summary/", {"from": "2026-10-01", "to": "2026-11-30", "group_by": group_by})
        keys = [row["key"] for row in rows.json()["rows"]]
        assert None in keys and len(keys) == 3


def test_the_summary_reads_the_rollup_not_the_ledger_for_whole_hours(ledger, django_assert_max_num_queries):
    client = key_client(ledger)
    UsageRecord.objects.filter(workspace=ledger).update(cost_usd=Decimal("99"))  # not how money moves: a probe
    with django_assert_max_num_queries(8):
        body = client.get("/api/v1/usage/summary/", {"from": "2026-10-31", "to": "2026-11-01"}).json()
    assert Decimal(body["totals"]["cost_usd"]) < 99


def test_an_empty_range_answers_zero_totals(workspace):
    body = key_client(workspace).get("/api/v1/usage/summary/", {"from": "2020-01-01", "to": "2020-02-01"}).json()
    assert body["rows"] == []
    assert body["totals"] == {
        "calls": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": "0.0000000000",
        "cache_hits": 0,
        "saved_usd": "0.0000000000",
    }


def test_defaults_are_the_thirty_days_up_to_the_end_of_today_by_day(workspace):
    body = key_client(workspace).get("/api/v1/usage/summary/").json()
    end = dt.datetime.fromisoformat(body["to"])
    assert body["group_by"] == "day"
    assert end - dt.datetime.fromisoformat(body["from"]) == dt.timedelta(days=30)
    assert end.time() == dt.time() and dt.timedelta(0) < end - dt.datetime.now(dt.UTC) <= dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"group_by": "week"}, {"group_by"}),
        ({"from": "yesterday"}, {"from"}),
        ({"to": "2026-13-01"}, {"to"}),
        ({"from": "2026-11-02", "to": "2026-11-01"}, {"from"}),
        ({"from": "x", "to": "y", "group_by": "z"}, {"from", "to", "group_by"}),
    ],
)
def test_bad_parameters_get_400_naming_each_field(workspace, params, fields):
    body = problem(key_client(workspace).get("/api/v1/usage/summary/", params), 400, "validation_error")
    assert {e["field"] for e in body["errors"]} == fields


def test_rebuilding_the_rollup_from_the_ledger_changes_no_answer(ledger):
    client = key_client(ledger)
    params = {"from": "2026-10-30", "to": "2026-11-02", "group_by": "api_key"}
    before = client.get("/api/v1/usage/summary/", params).json()
    UsageHourly.objects.filter(workspace=ledger).delete()

    usage_rollup_rebuild(workspace=ledger)

    assert client.get("/api/v1/usage/summary/", params).json() == before
