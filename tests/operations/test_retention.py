"""Retention policy tables over synthetic snapshot times (the pure policy function only)."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbak.errors import UsageError
from casbak.manifest import Manifest
from casbak.operations.retention import Duration, RetentionPolicy, apply_policy


def at(text: str) -> int:
    """Return UTC nanoseconds for an ISO time such as 2024-02-29T12:00:00."""
    moment = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def snap(name: str, time_ns: int, host: str = "trainer-1", sources=("/data",), tags=()) -> Manifest:
    manifest = Manifest(
        time_ns=time_ns, hostname=host, username="u", sources=list(sources), tree=b"\0" * 32,
        program_version="test", tags=list(tags),
    )
    manifest.id = name
    return manifest


def kept(manifests, policy, group_by="host,sources") -> set[str]:
    return {d.manifest.id for d in apply_policy(manifests, policy, group_by) if d.keep}


def reasons(manifests, policy) -> dict[str, list[str]]:
    return {d.manifest.id: d.reasons for d in apply_policy(manifests, policy)}


def test_keep_last_keeps_newest():
    manifests = [snap(f"s{i}", at(f"2024-01-0{i}T00:00:00")) for i in range(1, 6)]

    assert kept(manifests, RetentionPolicy(last=3)) == {"s3", "s4", "s5"}


CALENDAR_CASES = [
    pytest.param(
        RetentionPolicy(daily=3),
        ["2024-02-28T23:00:00", "2024-02-29T01:00:00", "2024-02-29T23:00:00", "2024-03-01T00:00:00"],
        {"2024-02-28T23:00:00", "2024-02-29T23:00:00", "2024-03-01T00:00:00"},
        id="daily-leap-day",
    ),
    pytest.param(
        RetentionPolicy(monthly=3),
        ["2024-01-31T23:59:59", "2024-02-01T00:00:00", "2024-02-29T12:00:00", "2024-03-01T00:00:00"],
        {"2024-01-31T23:59:59", "2024-02-29T12:00:00", "2024-03-01T00:00:00"},
        id="monthly-month-ends",
    ),
    pytest.param(
        RetentionPolicy(weekly=2),
        ["2020-12-31T10:00:00", "2021-01-03T23:59:59", "2021-01-04T00:00:00"],
        {"2021-01-03T23:59:59", "2021-01-04T00:00:00"},
        id="weekly-iso-week-53-spans-new-year",
    ),
    pytest.param(
        RetentionPolicy(yearly=2),
        ["2020-12-31T10:00:00", "2021-01-03T23:59:59", "2021-01-04T00:00:00"],
        {"2020-12-31T10:00:00", "2021-01-04T00:00:00"},
        id="yearly-calendar-not-iso-year",
    ),
    pytest.param(
        RetentionPolicy(yearly=5),
        ["2022-12-31T23:59:59", "2023-01-01T00:00:00", "2023-12-31T23:59:59", "2024-01-01T00:00:00"],
        {"2022-12-31T23:59:59", "2023-12-31T23:59:59", "2024-01-01T00:00:00"},
        id="yearly-boundary-seconds",
    ),
    pytest.param(
        RetentionPolicy(hourly=2),
        ["2024-03-10T01:59:59", "2024-03-10T02:00:00", "2024-03-10T02:30:00", "2024-03-10T05:00:00"],
        {"2024-03-10T02:30:00", "2024-03-10T05:00:00"},
        id="hourly-skips-empty-hours",
    ),
    pytest.param(
        RetentionPolicy(daily=-1),
        ["2024-01-01T01:00:00", "2024-01-01T02:00:00", "2024-01-02T01:00:00", "2024-01-09T01:00:00"],
        {"2024-01-01T02:00:00", "2024-01-02T01:00:00", "2024-01-09T01:00:00"},
        id="daily-unlimited",
    ),
]


@pytest.mark.parametrize("policy, times, expected", CALENDAR_CASES)
def test_calendar_buckets_keep_newest(policy, times, expected):
    manifests = [snap(t, at(t)) for t in times]

    assert kept(manifests, policy) == expected


def test_iso_week_53_is_one_bucket():
    # 2020-12-28 (Monday) to 2021-01-03 (Sunday) is ISO week 2020-W53.
    times = ["2020-12-28T00:00:00", "2020-12-31T12:00:00", "2021-01-03T23:59:59"]
    manifests = [snap(t, at(t)) for t in times]

    assert kept(manifests, RetentionPolicy(weekly=10)) == {"2021-01-03T23:59:59"}


def test_ties_at_same_second_order_by_id():
    same = at("2024-05-05T05:05:05")
    manifests = [snap("aaaa", same), snap("ffff", same), snap("0000", same - 1_000_000_000)]

    for _ in range(5):
        random.shuffle(manifests)
        assert kept(manifests, RetentionPolicy(last=1)) == {"ffff"}
        assert kept(manifests, RetentionPolicy(hourly=1)) == {"ffff"}
        assert kept(manifests, RetentionPolicy(last=2)) == {"ffff", "aaaa"}


def test_keep_within_boundary_instant_is_kept():
    newest = at("2024-03-31T12:00:00")
    # One calendar month before March 31 is "February 31", clamped to February 29.
    cutoff = at("2024-02-29T12:00:00")
    manifests = [snap("newest", newest), snap("at-cutoff", cutoff), snap("just-before", cutoff - 1)]

    assert kept(manifests, RetentionPolicy(within=Duration.parse("1m"))) == {"newest", "at-cutoff"}


def test_keep_within_keeps_nanosecond_precision():
    newest = at("2024-03-31T12:00:00") + 999_999_999
    cutoff = newest - 36 * 3600 * 1_000_000_000
    manifests = [snap("newest", newest), snap("at-cutoff", cutoff), snap("just-before", cutoff - 1)]

    assert kept(manifests, RetentionPolicy(within=Duration.parse("36h"))) == {"newest", "at-cutoff"}


WITHIN_CASES = [
    ("2024-02-29T00:00:00", "1y", "2023-02-28T00:00:00"),
    ("2025-03-01T00:00:00", "1y", "2024-03-01T00:00:00"),
    ("2024-03-31T00:00:00", "1m", "2024-02-29T00:00:00"),
    ("2024-01-15T00:00:00", "1m", "2023-12-15T00:00:00"),
    ("2024-01-10T06:00:00", "2w3d", "2023-12-24T06:00:00"),
    ("2024-01-01T05:00:00", "1d6h", "2023-12-30T23:00:00"),
    ("2024-05-31T00:00:00", "1y3m", "2023-02-28T00:00:00"),
]


@pytest.mark.parametrize("newest, duration, cutoff", WITHIN_CASES)
def test_duration_subtracts_calendar_units(newest, duration, cutoff):
    start = dt.datetime.fromisoformat(newest).replace(tzinfo=dt.timezone.utc)

    result = Duration.parse(duration).subtract_from(start)

    assert result == dt.datetime.fromisoformat(cutoff).replace(tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text", ["", "30", "d", "1x", "3d 2h", "-1d", "1.5d"])
def test_duration_rejects_invalid_text(text):
    with pytest.raises(UsageError):
        Duration.parse(text)


def test_keep_within_is_relative_to_group_newest():
    # The second host stopped in 2023; its last snapshots still count as recent for it.
    manifests = [
        snap("a-new", at("2024-06-01T00:00:00"), host="a"),
        snap("a-old", at("2024-01-01T00:00:00"), host="a"),
        snap("b-last", at("2023-01-10T00:00:00"), host="b"),
        snap("b-prev", at("2023-01-05T00:00:00"), host="b"),
    ]

    assert kept(manifests, RetentionPolicy(within=Duration.parse("30d"))) == {"a-new", "b-last", "b-prev"}


def test_keep_tag_keeps_tagged_snapshots():
    manifests = [
        snap("new", at("2024-01-03T00:00:00")),
        snap("release", at("2024-01-02T00:00:00"), tags=("release", "rlhf")),
        snap("plain", at("2024-01-01T00:00:00"), tags=("nightly",)),
    ]

    decisions = reasons(manifests, RetentionPolicy(last=1, tags=("release", "audit")))

    assert decisions["new"] == ["last"]
    assert decisions["release"] == ["tag release"]
    assert decisions["plain"] == []


def test_every_matching_rule_is_a_reason():
    manifests = [snap("only", at("2024-01-01T00:00:00"), tags=("keep",))]

    decisions = reasons(manifests, RetentionPolicy(last=1, daily=1, yearly=1, within=Duration.parse("1d"), tags=("keep",)))

    assert decisions["only"] == ["last", "daily", "yearly", "within 1d", "tag keep"]


GROUPING_CASES = [
    ("host,sources", {"a-data", "a-logs", "b-data"}),
    ("host", {"a-logs", "b-data"}),
    ("sources", {"b-data", "a-logs"}),
    ("none", {"b-data"}),
]


@pytest.mark.parametrize("group_by, expected", GROUPING_CASES)
def test_group_by_judges_groups_separately(group_by, expected):
    manifests = [
        snap("a-data", at("2024-01-01T00:00:00"), host="a", sources=("/data",)),
        snap("a-data-old", at("2023-12-01T00:00:00"), host="a", sources=("/data",)),
        snap("a-logs", at("2024-01-02T00:00:00"), host="a", sources=("/logs",)),
        snap("b-data", at("2024-01-03T00:00:00"), host="b", sources=("/data",)),
    ]

    assert kept(manifests, RetentionPolicy(last=1), group_by) == expected


def test_source_order_does_not_split_groups():
    manifests = [
        snap("new", at("2024-01-02T00:00:00"), sources=("/b", "/a")),
        snap("old", at("2024-01-01T00:00:00"), sources=("/a", "/b")),
    ]

    assert kept(manifests, RetentionPolicy(last=1)) == {"new"}


def test_empty_policy_is_rejected():
    with pytest.raises(UsageError):
        apply_policy([snap("x", 0)], RetentionPolicy())


def test_invalid_counts_and_group_by_are_rejected():
    with pytest.raises(UsageError):
        RetentionPolicy(last=-2)
    with pytest.raises(UsageError):
        apply_policy([snap("x", 0)], RetentionPolicy(last=1), "tags")


times_ns = st.integers(min_value=at("2019-01-01T00:00:00"), max_value=at("2027-01-01T00:00:00"))


@settings(max_examples=60, deadline=None)
@given(
    times=st.lists(st.tuples(times_ns, st.sampled_from(["h1", "h2"])), min_size=1, max_size=40),
    count=st.integers(min_value=1, max_value=6),
    rule=st.sampled_from(["last", "hourly", "daily", "weekly", "monthly", "yearly"]),
    seed=st.integers(0, 1000),
)
def test_policy_properties(times, count, rule, seed):
    manifests = [snap(f"{i:04d}", t, host=h) for i, (t, h) in enumerate(times)]
    policy = RetentionPolicy(**{rule: count})
    baseline = kept(manifests, policy)

    shuffled = list(manifests)
    random.Random(seed).shuffle(shuffled)
    assert kept(shuffled, policy) == baseline
    for host in ("h1", "h2"):
        members = [m for m in manifests if m.hostname == host]
        kept_here = [m for m in members if m.id in baseline]
        assert len(kept_here) <= count
        if members:
            newest = max(members, key=lambda m: (m.time_ns, m.id))
            assert newest.id in baseline
