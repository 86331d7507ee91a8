"""What a mode is: the one interface `python -m bootstrap` drives every mode through.

A mode owns its flags, their validation and what they imply, its default --timeout, its target (the server and
the webhook host the run uses), its stages and their typed state, and the figures it adds to the report. The
CLI knows none of them by name: it asks the registry (bootstrap.modes.MODES) which mode the arguments select.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bootstrap.context import RunContext, Server
from bootstrap.stages import Stage

if TYPE_CHECKING:  # a mode that verifies a deployment elsewhere imports nothing of devstack
    from devstack.stack_env import Stack

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Target:
    """Where a run points: the server it verifies (None: LIVEKIT_URL from the settings) and the address its
    webhook receiver binds (None: where the stack's server posts, 127.0.0.1 natively)."""

    livekit_url: str | None = None
    webhook_host: str | None = None
    # A deployment elsewhere (--url): the receiver's port when it listens (0: no receiver at all), so the stack's
    # server config is not read; the agent name the worker registers (None: the stack's).
    webhook_port: int | None = None
    agent_name: str | None = None
    # Every LiveKit server the run talks to, named (a cluster's nodes): a stage that fails names the one that
    # stopped answering (bootstrap.diagnosis). Empty: the one at livekit_url (LIVEKIT_URL).
    servers: tuple[Server, ...] = ()


@dataclass
class Plan:
    """One run of a mode: its stages, bound to the mode's own state, and how to read that state back as the
    report's extra figures (JSON keys) once the stages ran."""

    stages: list[Stage]
    figures: Callable[[RunContext], dict[str, Any]] = field(default=lambda ctx: {})
    # A mode that runs on a schedule of its own (the canary) instead of once: given a factory of fresh contexts
    # (settings and config re-read, each with its own --timeout deadline), it owns the loop and returns the exit
    # code. None: the CLI runs `stages` once.
    serve: Callable[[Callable[[], RunContext]], Coroutine[Any, Any, int]] | None = None
    # What the report's header says about the server (after the stages ran). None: the URL and the version this
    # checkout pins (true of every server the harness started; a target elsewhere says its own).
    header: Callable[[RunContext], dict[str, str]] | None = None


class Mode:
    """A mode of `python -m bootstrap`. Subclasses set `name` and `flag` and override what they need."""

    name: ClassVar[str]
    flag: ClassVar[str] = ""  # the option that selects it ("" for the default mode)
    default: ClassVar[bool] = False  # selected when no other mode is
    # Runs another mode's verification (the canary, on a schedule): selected together with that mode's flag, not
    # counted as a second mode, and chosen over it.
    wraps: ClassVar[bool] = False
    # Other modes whose flags this one also takes, running them against its own target (remote mode: --load
    # against --url): selected together, those are not counted as a second mode.
    absorbs: ClassVar[tuple[str, ...]] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare this mode's own options."""

    def selected(self, args: argparse.Namespace) -> bool:
        """Whether `args` ask for this mode."""
        return False

    def resolve(self, args: argparse.Namespace) -> str | None:
        """Check this mode's options (whether or not it is selected: an option of its own given to another mode
        is an error too) and fill in what they imply; an error message, or None."""
        return None

    def timeout(self, args: argparse.Namespace) -> float:
        """The default --timeout of a run of this mode."""
        return DEFAULT_TIMEOUT

    def timeout_note(self) -> str:
        """How this mode's default --timeout differs from the common one, for --help ("" if it does not)."""
        return ""

    def target(self, args: argparse.Namespace, stack: Stack) -> Target:
        """Where this run points; the default: the development stack as .env and docker/livekit.yaml say."""
        return Target()

    def plan(self, args: argparse.Namespace) -> Plan:
        raise NotImplementedError
