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


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--url", "wss://my-project.livekit.cloud", "--load", "5", "--own-deployment"], "LiveKit Cloud"),
        (["--url", "wss://LIVEKIT.CLOUD", "--load", "5", "--own-deployment"], "acceptable-use policy"),
        (["--url", "wss://lk.example.com", "--load", "5"], "add --own-deployment"),
        (["--url", "wss://lk.example.com", "--load", "5", "--hold", "10", "--own-deployment"], "--hold samples"),
        (["--url", "wss://lk.example.com", "--own-deployment"], "goes with --url and --load N"),
        (["--own-deployment"], "need --url"),
    ],
)
def test_a_load_it_may_not_run_is_refused_naming_why(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(argv)
    assert refused.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "ws://127.0.0.1:7880", "--load", "3"],  # this machine: no say-so needed
        ["--url", "wss://lk.example.com", "--load", "3", "--own-deployment"],
    ],
)
def test_a_load_of_your_own_deployment_runs_as_the_remote_mode(argv: list[str]) -> None:
    args = parse_args(argv)
    mode = MODES.select(args)
    assert mode.name == "remote"
    names = [stage.name for stage in mode.plan(args).stages]
    assert names == ["endpoint", "keys", "worker", "load"]  # the stack's services are not the target's
    assert mode.timeout(args) > MODES.get("load").timeout(args)
