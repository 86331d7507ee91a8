"""The modes of `python -m bootstrap`, one room each, and the one registry the CLI asks.

Adding a mode: a module (or subpackage) here with a `Mode` subclass (bootstrap.modes.base) — its flags, their
validation, its default --timeout, its target, its stages and state, its figures — and one line in MODES
below (or `MODES.register(...)` from outside). The engine (runner, context, stages/) never imports a mode, no
mode imports another (a mode that runs another asks this registry), and the CLI names none of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator

from bootstrap.modes.base import DEFAULT_TIMEOUT, Mode, Plan, Target
from bootstrap.modes.canary import CanaryMode
from bootstrap.modes.cluster import ClusterMode
from bootstrap.modes.in_browser import BrowserMode
from bootstrap.modes.load import LoadMode
from bootstrap.modes.paths import PathsMode
from bootstrap.modes.remote import RemoteMode
from bootstrap.modes.single import SingleMode


class Registry:
    """The modes, in the order --help lists them; exactly one is the default."""

    def __init__(self, modes: Iterable[Mode]) -> None:
        self._modes: list[Mode] = list(modes)

    def __iter__(self) -> Iterator[Mode]:
        return iter(self._modes)

    def register(self, mode: Mode) -> None:
        if any(m.name == mode.name for m in self._modes):
            raise ValueError(f"a mode named {mode.name!r} is registered already")
        self._modes.append(mode)

    def unregister(self, name: str) -> None:
        self._modes = [m for m in self._modes if m.name != name]

    def get(self, name: str) -> Mode:
        """A mode by name: how a mode that wraps another (a canary) finds it without importing it."""
        return next(m for m in self._modes if m.name == name)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        for mode in self._modes:
            mode.add_arguments(parser)

    def timeout_notes(self) -> str:
        return "; ".join(note for mode in self._modes if (note := mode.timeout_note()))

    def resolve(self, args: argparse.Namespace) -> str | None:
        """An error message when the options are at odds (two modes at once, an option without its mode), else
        None; each mode fills in what its options imply."""
        chosen = self._chosen(args)
        if len(chosen) > 1:
            flags = [m.flag for m in self._modes if not m.default]
            return f"{', '.join(flags[:-1])} and {flags[-1]} are separate modes: run them one at a time"
        return next((error for mode in self._modes if (error := mode.resolve(args))), None)

    def select(self, args: argparse.Namespace) -> Mode:
        """The mode `args` ask for (resolved first), or the default."""
        wrapper = next((m for m in self._modes if m.selected(args) and m.wraps), None)
        return wrapper or self.wrapped(args)

    def wrapped(self, args: argparse.Namespace) -> Mode:
        """The mode a wrapping mode (the canary) runs: the one the other arguments select, or the default."""
        return next(iter(self._chosen(args)), None) or next(m for m in self._modes if m.default)

    def _chosen(self, args: argparse.Namespace) -> list[Mode]:
        """The modes `args` select, but a wrapper, and a mode another selected one absorbs (runs as its own)."""
        chosen = [m for m in self._modes if m.selected(args) and not m.wraps]
        absorbed = {name for m in chosen for name in m.absorbs}
        return [m for m in chosen if m.name not in absorbed]


__all__ = ["DEFAULT_TIMEOUT", "MODES", "Mode", "Plan", "Registry", "Target"]

MODES = Registry([SingleMode(), LoadMode(), BrowserMode(), ClusterMode(), PathsMode(), RemoteMode(), CanaryMode()])
