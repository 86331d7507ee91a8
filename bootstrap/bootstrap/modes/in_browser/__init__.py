"""Browser mode (`--browser`): the single run, then headless Chromium joins the same room through frontend/.
Chromium's driver and the frontend server load only when this mode is planned (never in a single run)."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from bootstrap.modes.base import Mode, Plan
from bootstrap.stages import STAGES, Stage


class BrowserMode(Mode):
    name = "browser"
    flag = "--browser"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("browser mode")
        group.add_argument(
            "--browser", action="store_true", help="add the browser stage: headless Chromium joins through frontend/"
        )
        group.add_argument(
            "--frontend-env",
            type=Path,
            default=None,
            metavar="PATH",
            help="where the browser stage reads NEXT_PUBLIC_LIVEKIT_URL (default frontend/.env.local)",
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return bool(args.browser)

    def plan(self, args: argparse.Namespace) -> Plan:
        from bootstrap.modes.in_browser import browser_join

        state = browser_join.BrowserState(args.frontend_env)
        stage = Stage("browser", partial(browser_join.run, state=state), 30.0,
                      partial(browser_join.on_timeout, state=state))  # fmt: skip
        return Plan([*STAGES, stage], lambda ctx: ctx.data_plane_figures())
