"""The single run (`python -m bootstrap`, the default): stack, worker, token, join, dispatch, data, media,
webhooks against the development stack."""

from __future__ import annotations

import argparse

from bootstrap.modes.base import Mode, Plan
from bootstrap.stages import STAGES


class SingleMode(Mode):
    name = "single"
    default = True

    def plan(self, args: argparse.Namespace) -> Plan:
        return Plan(list(STAGES), lambda ctx: ctx.data_plane_figures())
