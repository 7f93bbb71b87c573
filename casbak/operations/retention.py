"""Retention policy: which snapshots `forget` and `gc` keep, as a pure function.

Snapshots are grouped (by host and source set unless `group_by` chooses otherwise) and each group is
judged on its own, newest first:

- keep-last N keeps the N newest snapshots.
- keep-hourly/daily/weekly/monthly/yearly N keeps the newest snapshot of each of the
  N newest UTC calendar buckets (hour, day, ISO 8601 week, month, year) that contain
  a snapshot. Buckets without snapshots do not count.
- keep-within DURATION keeps every snapshot not older than DURATION before the newest
  snapshot of its group (the newest snapshot, not the clock, so a host that stopped
  backing up keeps its last snapshots). The boundary instant itself is kept.
- keep-tag TAG keeps every snapshot carrying one of the tags.

A count of -1 means unlimited. A snapshot is kept when any rule keeps it, and every
such rule is recorded as a reason. Snapshots with equal times are ordered by id, so the
outcome never depends on listing order.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

from casbak.errors import UsageError
from casbak.manifest import Manifest

GROUP_BY_CHOICES = ("host,sources", "host", "sources", "none")

_DURATION_PART = re.compile(r"(\d+)([hdwmy])")
_BUCKET_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Duration:
    """A calendar duration such as `1y6m` or `36h`; months and years follow the calendar."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """Parse `<number><unit>` parts with units h, d, w, m (months), y, such as `2w3d`."""
        cleaned = text.strip().lower()
        parts = _DURATION_PART.findall(cleaned)
        if not cleaned or "".join(n + u for n, u in parts) != cleaned:
            raise UsageError(
                f"duration {text!r}: invalid; write numbers with units h, d, w, m (months) or y, such as 30d or 1y6m"
            )
        values = {"h": 0, "d": 0, "w": 0, "m": 0, "y": 0}
        for number, unit in parts:
            values[unit] += int(number)
        return cls(years=values["y"], months=values["m"], days=values["d"] + 7 * values["w"], hours=values["h"])

    def subtract_from(self, moment: dt.datetime) -> dt.datetime:
        """Return `moment` minus this duration; a day missing in the target month clamps to its end."""
        month_index = moment.year * 12 + (moment.month - 1) - self.years * 12 - self.months
        year, month = divmod(month_index, 12)
        month += 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        shifted = moment.replace(year=year, month=month, day=day)
        return shifted - dt.timedelta(days=self.days, hours=self.hours)

    def __str__(self) -> str:
        text = "".join(f"{value}{unit}" for value, unit in ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")) if value)
        return text or "0h"


@dataclass(frozen=True)
class RetentionPolicy:
    """Counts of snapshots to keep per rule; 0 disables a rule and -1 means unlimited."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Optional[Duration] = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for rule in ("last", *_BUCKET_RULES):
            if getattr(self, rule) < -1:
                raise UsageError(f"--keep-{rule} {getattr(self, rule)}: must be -1 (unlimited), 0 (off) or a positive count")

    def is_empty(self) -> bool:
        counts = [self.last, *(getattr(self, rule) for rule in _BUCKET_RULES)]
        return not any(counts) and self.within is None and not self.tags

    def describe(self) -> str:
        parts = [f"keep-{rule} {getattr(self, rule)}" for rule in ("last", *_BUCKET_RULES) if getattr(self, rule)]
        if self.within is not None:
            parts.append(f"keep-within {self.within}")
        parts.extend(f"keep-tag {tag}" for tag in self.tags)
        return ", ".join(parts) or "no rules"


@dataclass
class Decision:
    """The verdict on one snapshot: kept when `reasons` names at least one rule."""

    manifest: Manifest
    group: tuple
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def group_key(manifest: Manifest, group_by: str) -> tuple:
    """Return the group of a snapshot for a `--group-by` value."""
    if group_by not in GROUP_BY_CHOICES:
        raise UsageError(f"--group-by {group_by!r}: must be one of {', '.join(GROUP_BY_CHOICES)}")
    sources = tuple(sorted(manifest.sources))
    if group_by == "host,sources":
        return (manifest.hostname, sources)
    if group_by == "host":
        return (manifest.hostname,)
    if group_by == "sources":
        return (sources,)
    return ()


def apply_policy(manifests: Sequence[Manifest], policy: RetentionPolicy, group_by: str = "host,sources") -> list[Decision]:
    """Judge every snapshot; return decisions newest first within each group, groups sorted.

    Raises UsageError for an empty policy, because forgetting every snapshot is never
    what a caller of a retention policy means.
    """
    if policy.is_empty():
        raise UsageError("retention policy is empty: give at least one --keep-* option")
    groups: dict[tuple, list[Manifest]] = {}
    for manifest in manifests:
        groups.setdefault(group_key(manifest, group_by), []).append(manifest)
    decisions: list[Decision] = []
    for key in sorted(groups, key=repr):
        decisions.extend(_judge_group(key, groups[key], policy))
    return decisions


def _judge_group(key: tuple, members: list[Manifest], policy: RetentionPolicy) -> list[Decision]:
    ordered = sorted(members, key=lambda m: (m.time_ns, m.id), reverse=True)
    decisions = [Decision(manifest, key) for manifest in ordered]
    _keep_last(decisions, policy.last)
    for rule in _BUCKET_RULES:
        _keep_buckets(decisions, rule, getattr(policy, rule), _BUCKET_FUNCTIONS[rule])
    if policy.within is not None:
        _keep_within(decisions, policy.within)
    if policy.tags:
        _keep_tags(decisions, policy.tags)
    return decisions


def _keep_last(decisions: list[Decision], count: int) -> None:
    for position, decision in enumerate(decisions):
        if count == -1 or position < count:
            decision.reasons.append("last")


def _keep_buckets(decisions: list[Decision], rule: str, count: int, bucket_of: Callable[[dt.datetime], Hashable]) -> None:
    # Decisions are newest first, so the first snapshot met in a bucket is its newest.
    remaining = count
    previous_bucket: Optional[Hashable] = None
    for decision in decisions:
        if remaining == 0:
            return
        bucket = bucket_of(_utc(decision.manifest.time_ns))
        if bucket == previous_bucket:
            continue
        previous_bucket = bucket
        decision.reasons.append(rule)
        if remaining > 0:
            remaining -= 1


def _keep_within(decisions: list[Decision], duration: Duration) -> None:
    if not decisions:
        return
    newest = _utc(decisions[0].manifest.time_ns)
    cutoff_ns = _to_ns(duration.subtract_from(newest)) + decisions[0].manifest.time_ns % 1000
    for decision in decisions:
        if decision.manifest.time_ns >= cutoff_ns:
            decision.reasons.append(f"within {duration}")


def _keep_tags(decisions: list[Decision], tags: tuple[str, ...]) -> None:
    for decision in decisions:
        matched = sorted(set(tags) & set(decision.manifest.tags))
        decision.reasons.extend(f"tag {tag}" for tag in matched)


def _utc(time_ns: int) -> dt.datetime:
    # Integer arithmetic: a float of nanoseconds since 1970 loses sub-microsecond digits.
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).replace(microsecond=nanos // 1000)


def _to_ns(moment: dt.datetime) -> int:
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


_BUCKET_FUNCTIONS: dict[str, Callable[[dt.datetime], Hashable]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar())[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}
