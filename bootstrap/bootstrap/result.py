"""What a run produces: one result per stage, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"
    WARN = "warn"  # passed, with something the operator should fix before it bites (exit code 0)


class Kind(StrEnum):
    """What kind of cause a failure has, in every mode: the one small set a canary labels its metrics with."""

    # Nothing answers at an address and port: refused, unreachable, no route, or a server that stopped answering
    # (frozen, hung: the kernel accepts its connections, the process sends nothing back).
    NETWORK = "network"
    DNS = "dns"  # a name does not resolve
    TLS = "tls"  # a certificate this client does not accept (expired, another name, an untrusted CA)
    AUTH = "auth"  # an API key the server does not know, or a secret that does not match it
    CLOCK = "clock"  # this machine's clock and the server's disagree enough to refuse tokens
    CONFIG = "config"  # a setting on either side (the server's config, the run's options, the agent's code)
    NOT_READY = "not-ready"  # the server answers but says it is not ready (GET / 406)
    MEDIA = "media"  # the media or data path: ICE, audio, data packets
    TIMEOUT = "timeout"  # something never finished in its time, no more precise cause known
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM


@dataclass(frozen=True)
class StageResult:
    name: str
    status: Status
    seconds: float = 0.0
    detail: str = ""
    cause: str = ""
    fix: str = ""
    kind: str = ""  # a Kind's value on a FAIL or WARN, else ""


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
        return bool({Status.PASS, Status.WARN} & set(statuses)) and Status.FAIL not in statuses

    @property
    def status(self) -> Status:
        """FAIL, else WARN when a stage warned, else PASS: a WARN run still passes (exit code 0)."""
        if not self.passed:
            return Status.FAIL
        return Status.WARN if any(s.status is Status.WARN for s in self.stages) else Status.PASS


class StageFailure(Exception):
    """Raised by a stage that knows exactly what went wrong and how to fix it."""

    def __init__(self, cause: str, fix: str, kind: Kind | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix
        self.kind = kind  # None: the shared diagnosis names it (bootstrap.diagnosis.kind_of)


class StageWarning(Exception):
    """Raised by a stage that did its job but saw something to fix (a certificate close to expiry, a clock behind):
    the stage is WARN with `detail`, `cause` and `fix`; the run still passes."""

    def __init__(self, detail: str, cause: str, fix: str, kind: Kind) -> None:
        super().__init__(cause)
        self.detail = detail
        self.cause = cause
        self.fix = fix
        self.kind = kind


class StageSkipped(Exception):
    """Raised by a stage that cannot run here for a reason that is no fault of the stack (e.g. not root)."""
