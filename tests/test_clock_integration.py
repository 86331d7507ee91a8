"""A clock that disagrees with the server's is named as the clock, with the measured skew, in every mode — the local
default run included (it used to be reported as a key/secret mismatch). The stack's server runs on this machine's
clock; the run's own is shifted with libfaketime, preloaded into its Python process alone."""

from __future__ import annotations

import glob
import re

import pytest

from devstack import install
from devstack.stack_env import Stack
from tests.conftest import bootstrap_report

pytestmark = pytest.mark.faults


def test_the_local_run_with_a_clock_ten_minutes_ahead_names_the_clock(stack: Stack) -> None:
    libfaketime = glob.glob(install.LIBFAKETIME_GLOB)
    if not libfaketime:
        pytest.skip("libfaketime is missing: `make net-deps` installs Debian's faketime")
    code, report = bootstrap_report(env={"LD_PRELOAD": libfaketime[0], "FAKETIME": "+10m"}, timeout=60)
    worker = next(s for s in report["stages"] if s["name"] == "worker")
    assert (code, worker["status"], worker["kind"]) == (1, "fail", "clock"), worker
    ahead = re.search(r"this machine's is (\d+) s ahead of the server's", worker["cause"])
    assert ahead and 595 <= int(ahead.group(1)) <= 605, worker["cause"]
    assert "NTP" in worker["fix"] and "key" not in worker["fix"].lower()
    assert "eyJhbGciOi…" in worker["cause"]  # the server's 401 echoes the token: redacted
