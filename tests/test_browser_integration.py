"""A real browser joins: headless Chromium (Debian's) runs frontend/ with livekit-client from npm,
through the same SFU, checked through the server API and a verified track_published webhook."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.browser.chromium import find_chromium
from bootstrap.browser.frontend_server import CLIENT_JS
from bootstrap.stages import STAGES
from devstack.stack_env import Stack
from tests.conftest import bootstrap_report

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def browser_deps() -> None:
    """`make test` installs Chromium and livekit-client (make browser-deps): missing, they are a failure
    that says so, never a silent skip."""
    missing = [what for what, ok in (("chromium", find_chromium()), ("livekit-client", CLIENT_JS.exists())) if not ok]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `make browser-deps` (`make test` does)")


def browser_run(*args: str) -> tuple[int, dict[str, object]]:
    return bootstrap_report("--browser", *args)


def test_browser_stage_passes_after_the_single_run_stages(stack: Stack) -> None:
    code, report = browser_run()
    assert code == 0, report
    stages = report["stages"]
    assert isinstance(stages, list)
    assert [s["name"] for s in stages] == [*(s.name for s in STAGES), "browser"]
    assert all(s["status"] == "pass" for s in stages)
    assert "track_published verified" in stages[-1]["detail"]


@pytest.mark.parametrize("bad_url", ["localhost:7880", "ws://localhost:9"])
def test_broken_url_setting_fails_the_browser_stage_naming_it(stack: Stack, tmp_path: Path, bad_url: str) -> None:
    env = tmp_path / ".env.local"
    env.write_text(f"NEXT_PUBLIC_LIVEKIT_URL={bad_url}\n")
    code, report = browser_run("--frontend-env", str(env), "--timeout", "30")
    assert code == 1
    stages = report["stages"]
    assert isinstance(stages, list)
    browser = stages[-1]
    assert browser["name"] == "browser" and browser["status"] == "fail"
    assert "NEXT_PUBLIC_LIVEKIT_URL" in browser["cause"]
    assert "screenshot: reports/browser-failure.png" in browser["cause"]
    assert browser["fix"].startswith("set NEXT_PUBLIC_LIVEKIT_URL=ws://localhost:7880 in frontend/.env.local")
