"""Wording helpers of the command-line output."""

from __future__ import annotations

import pytest

from casbak.cli.output import count_of


@pytest.mark.parametrize(
    ("count", "expected"), [(0, "0 snapshots"), (1, "1 snapshot"), (2, "2 snapshots"), (1000, "1000 snapshots")],
)
def test_count_of_picks_number(count, expected):
    assert count_of(count, "snapshot") == expected
