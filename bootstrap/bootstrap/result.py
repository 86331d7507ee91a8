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
        return bool(self.stages) and all(s.status is Status.PASS for s in self.stages)

    @property
    def status(self) -> Status:
        return Status.PASS if self.passed else Status.FAIL


class StageFailure(Exception):
    """Raised by a stage that knows exactly what went wrong and how to fix it."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix
