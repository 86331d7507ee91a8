"""The remote mode's own logic, without a deployment: what its report says of the server, what it refuses."""

from __future__ import annotations

import pytest

from bootstrap.__main__ import parse_args
from bootstrap.modes import MODES

pytestmark = pytest.mark.unit


def test_its_report_header_gives_the_targets_version_never_this_checkouts_pin() -> None:
    args = parse_args(["--url", "wss://lk.example.com"])
    plan = MODES.select(args).plan(args)
    assert plan.header is not None
    header = plan.header(None)  # type: ignore[arg-type]  # the header reads the mode's state only
    assert header == {"version": "not seen"} and "pinned" not in header
