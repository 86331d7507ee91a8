"""The native stack (no Docker): livekit-server, Redis and PostgreSQL as local processes bound to 127.0.0.1 on
the ports from stack.env, each under its own unprivileged account when we are root (postgres, redis, livekit),
with data, logs and pid files under .runtime/. `python -m devstack` runs it when no Docker engine answers.

Layout (as root): .runtime/ and each .runtime/<service>/ are ours (root), the service's group may read (0750);
configs are 0640, logs and pid files 0600; only data and socket directories belong to the service account.
`down` stops exactly the processes `up` started (pid, start time, owner and executable all checked).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack import install, nodes, postgres, processes
from devstack.credentials import load_credentials
from devstack.health import check_all, probe_livekit
from devstack.ports import port_owner
from devstack.processes import Account
from devstack.safe_files import drop_others_access, ensure_dir, read_private, write_private
from devstack.server_config import load_config, node_config, render, short_secrets
from devstack.stack_env import LIVEKIT_YAML, RUNTIME_DIR, Stack

START_TIMEOUT = 60.0


class StackError(RuntimeError):
    """The native stack cannot be brought up; the message says why and what to do."""


@dataclass
class Service:
    name: str
    ports: list[tuple[int, bool]]  # (port, is_udp)
    account_name: str  # the system account it runs as when we are root
    command: Callable[[], list[str]] = field(repr=False)
    prepare: Callable[[Account], None] = field(default=lambda _: None, repr=False)
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def dir(self) -> Path:
        return RUNTIME_DIR / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def account(self) -> Account:
        if os.geteuid() != 0:
            return Account(None, os.getuid(), os.getgid())
        name = install.ensure_service_user(self.account_name)
        entry = pwd.getpwnam(name)
        return Account(name, entry.pw_uid, entry.pw_gid)

    def running_pid(self) -> int | None:
        """Our process's pid if it is alive and still exactly what `up` started, else None."""
        return processes.running(self.pid_file, self.command()[0], self.account())


def services(stack: Stack) -> list[Service]:
    return [
        Service("postgres", [(stack.postgres_port, False)], "postgres", lambda: postgres.command(stack),
                prepare=lambda _account: postgres.prepare(_account),
                stop_signal=signal.SIGINT),  # fast shutdown: ends client sessions instead of waiting for them
        Service("redis", [(stack.redis_port, False)], "redis",
                lambda: [shutil.which("redis-server") or "redis-server", str(RUNTIME_DIR / "redis" / "redis.conf")],
                prepare=lambda account: _prepare_redis(stack, account)),
        Service("livekit", livekit_ports(stack.livekit_port), "livekit",
                lambda: livekit_command(stack, RUNTIME_DIR / "livekit" / "livekit.yaml"),
                prepare=lambda account: prepare_livekit(RUNTIME_DIR / "livekit", node_config(), account)),
    ]  # fmt: skip


def cluster_services(stack: Stack) -> list[Service]:
    """The two cluster nodes, as services the same up/down/status machinery runs."""
    return [
        Service(node.service, livekit_ports(node.port), "livekit",
                lambda node=node: livekit_command(stack, node.config_path),  # type: ignore[misc]
                prepare=lambda account, node=node: prepare_livekit(  # type: ignore[misc]
                    node.dir, nodes.cluster_node_config(stack, node, load_credentials().redis_password), account))
        for node in nodes.nodes(stack)
    ]  # fmt: skip


def livekit_ports(port: int) -> list[tuple[int, bool]]:
    return [(port, False), (port + 1, False), (port + 2, True)]


def livekit_command(stack: Stack, config: Path) -> list[str]:
    return [str(install.livekit_server_binary(stack)), "--config", str(config), "--bind", "127.0.0.1"]


def prepare_livekit(directory: Path, config: dict[str, object], account: Account) -> None:
    for key in short_secrets(load_config(LIVEKIT_YAML)):
        print(f"! {LIVEKIT_YAML}: the secret of key {key!r} is under 32 characters", file=sys.stderr)
    write_private(directory / "livekit.yaml", render(config), mode=0o640, gid=account.gid)


def _prepare_redis(stack: Stack, account: Account) -> None:
    """Redis reads its password from a config file only it (through its group) and we can read."""
    data = ensure_dir(RUNTIME_DIR / "redis" / "data", mode=0o700, uid=account.uid, gid=account.gid)
    lines = [
        "# Generated by devstack.native: do not edit.", f"port {stack.redis_port}", "bind 127.0.0.1",
        "protected-mode yes", f"requirepass {load_credentials().redis_password}", f"dir {data}",
        'save ""', "appendonly no", "daemonize no",
    ]  # fmt: skip
    write_private(RUNTIME_DIR / "redis" / "redis.conf", "\n".join(lines) + "\n", mode=0o640, gid=account.gid)


def _check_ports_free(to_start: list[Service]) -> None:
    """All ports checked before anything starts, so a conflict leaves nothing half-started."""
    taken = [
        f"{service.name}: port {port}/{'udp' if udp else 'tcp'} is already taken by {owner}"
        for service in to_start
        for port, udp in service.ports
        if (owner := port_owner(port, udp=udp))
    ]
    if taken:
        raise StackError("; ".join(taken) + ". Stop that process, or change the port in stack.env")


def _check_reachable(path: Path, account: Account) -> None:
    """A service account must be able to enter every directory above its files: a clone under /root (0700)
    would fail later with a bare "permission denied" from the service itself."""
    if account.name is None:
        return
    for directory in reversed(path.resolve().parents):
        info = directory.stat()
        searchable = info.st_mode & 0o001 or (info.st_gid == account.gid and info.st_mode & 0o010)
        if not (searchable or info.st_uid == account.uid):
            raise StackError(
                f"the {account.name} account cannot enter {directory} (mode {info.st_mode & 0o777:o}), so it cannot "
                f"reach {path}: clone the repository where other users may enter (e.g. /srv or /opt), or "
                f"`chmod o+x {directory}`"
            )


def _start(service: Service) -> int:
    account = service.account()
    _check_reachable(Path(service.command()[0]), account)
    _check_reachable(service.dir, account)
    group_may_read = 0o750 if account.name else 0o700
    ensure_dir(service.dir, mode=group_may_read, uid=os.geteuid(), gid=account.gid)
    service.prepare(account)
    record = processes.start(service.command(), account, log=service.log_file, pid_file=service.pid_file,
                             cwd=service.dir)  # fmt: skip
    return record.pid


def _select(stack: Stack, names: list[str]) -> list[Service]:
    return [s for s in services(stack) if not names or s.name in names]


def start_missing(selected: list[Service], *, quiet: bool = False) -> list[Service]:
    """Start those of `selected` not already running (all ports checked first); returns the started."""
    ensure_dir(RUNTIME_DIR, mode=0o755, uid=os.geteuid(), gid=os.getegid())
    drop_others_access(RUNTIME_DIR)
    to_start = []
    for service in selected:
        if pid := service.running_pid():
            _say(quiet, f"  {service.name:<9} already running (pid {pid})")
        else:
            to_start.append(service)
    _check_ports_free(to_start)
    for service in to_start:
        pid = _start(service)
        _say(quiet, f"  {service.name:<9} started (pid {pid}), log {service.log_file}")
    return to_start


def up(stack: Stack, names: list[str] | None = None) -> None:
    install.ensure_packages()
    install.ensure_livekit_server(stack)
    credentials = load_credentials()
    selected = _select(stack, names or [])
    start_missing(selected)
    _wait_healthy(stack, {s.name for s in selected})
    if postgres_service := next((s for s in selected if s.name == "postgres"), None):
        # Every up, not only the one that started it: an interrupted first up must not leave it missing.
        postgres.ensure_app_database(stack, postgres_service.account(), credentials.postgres_password)


def _wait_healthy(stack: Stack, names: set[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        results = asyncio.run(check_all(stack))
        down = [r for r in results if not r.up and r.name in names]
        if not down:
            return
        for service in services(stack):
            if service.name in names and service.pid_file.exists() and not service.running_pid():
                raise StackError(f"{service.name} exited during start-up; last log lines:\n{tail(service, 15)}")
        if time.monotonic() > deadline:
            lines = "\n".join(r.line() for r in down)
            raise StackError(f"not healthy after {START_TIMEOUT:.0f}s:\n{lines}")
        print(f"… waiting for {', '.join(r.name for r in down)}", file=sys.stderr, flush=True)
        time.sleep(1.0)


def down(stack: Stack, names: list[str] | None = None) -> None:
    stop_services(_select(stack, names or []))


def cluster_up(stack: Stack) -> None:
    """Redis (shared) first, then both nodes; ready when each answers GET / with 200 OK."""
    up(stack, ["redis"])
    start_missing(cluster_services(stack))
    deadline = time.monotonic() + START_TIMEOUT
    for node, service in zip(nodes.nodes(stack), cluster_services(stack), strict=True):
        while not asyncio.run(probe_livekit("127.0.0.1", node.port)).up:
            if not service.running_pid():
                raise StackError(f"{service.name} exited during start-up; last log lines:\n{tail(service, 15)}")
            if time.monotonic() > deadline:
                raise StackError(f"{service.name} not ready after {START_TIMEOUT:.0f}s; see {service.log_file}")
            time.sleep(0.5)


def cluster_down(stack: Stack) -> None:
    stop_services(cluster_services(stack))


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line, file=sys.stderr)


def stop_services(selected: list[Service], *, quiet: bool = False) -> None:
    for service in reversed(selected):
        pid = service.running_pid()
        if pid is None:
            if service.pid_file.exists() and service.dir.is_dir():
                service.pid_file.unlink()  # stale: its process is gone, or is not one we started
            _say(quiet, f"  {service.name:<9} not running")
            continue
        processes.stop(pid, service.stop_signal)
        service.pid_file.unlink(missing_ok=True)
        _say(quiet, f"  {service.name:<9} stopped (pid {pid})")


def status(stack: Stack) -> int:
    health = {r.name: r for r in asyncio.run(check_all(stack))}
    for service in services(stack):
        pid = service.running_pid()
        state = f"[native, pid {pid}]" if pid else "[not started by make up]"
        print(f"{health[service.name].line()}  {state}")
    return 0 if all(r.up for r in health.values()) else 1


def tail(service: Service, lines: int) -> str:
    text = read_private(service.log_file)
    return "(no log yet)" if text is None else "\n".join(text.splitlines()[-lines:])


def logs(stack: Stack, lines: int = 40) -> None:
    for service in services(stack):
        print(f"==> {service.log_file} <==\n{tail(service, lines)}\n")
