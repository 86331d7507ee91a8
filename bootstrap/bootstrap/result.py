"""What a run produces: one result per stage, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StageResult:
    name: str
    status: Status
    seconds: float = 0.0
    detail: str = ""
    cause: str = ""
    fix: str = ""


@dataclass(frozen=True)
class RunResult:
    stages: list[StageResult]
    seconds: float
    context: dict[str, str] = field(default_factory=dict)  # server URL, version: for the report header
    extra: dict[str, object] = field(default_factory=dict)  # mode-specific figures, e.g. "load"

    @property
    def passed(self) -> bool:
        """No stage failed and at least one passed: a stage skipped for a reason of its own (a path this machine
        cannot run) does not fail the run, but a run where nothing passed proves nothing."""
        statuses = [s.status for s in self.stages]
        return Status.PASS in statuses and Status.FAIL not in statuses

    @property
    def status(self) -> Status:
        return Status.PASS if self.passed else Status.FAIL


class StageFailure(Exception):
    """Raised by a stage that knows exactly what went wrong and how to fix it."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix


class StageSkipped(Exception):
    """Raised by a stage that cannot run here for a reason that is no fault of the stack (e.g. not root)."""
