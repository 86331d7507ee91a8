"""The native stack (no Docker): livekit-server, Redis and PostgreSQL as local processes bound to
127.0.0.1 on the ports from stack.env, with pid files, data and logs under .runtime/.
`python -m devstack` runs it when no Docker engine answers.

`down` stops exactly the processes whose pid files `up` wrote (checked against their start time).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack import install, nodes
from devstack.health import check_all, probe_livekit
from devstack.ports import port_owner
from devstack.server_config import load_config, node_config, render, short_secrets
from devstack.stack_env import LIVEKIT_YAML, RUNTIME_DIR, Stack

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    """The native stack cannot be brought up; the message says why and what to do."""


@dataclass
class Service:
    name: str
    ports: list[tuple[int, bool]]  # (port, is_udp)
    command: Callable[[], list[str]] = field(repr=False)
    prepare: Callable[[], None] = field(default=lambda: None, repr=False)
    user: str | None = None

    @property
    def dir(self) -> Path:
        return RUNTIME_DIR / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def running_pid(self) -> int | None:
        """Our process's pid if it is alive and still the process we started, else None.

        The pid file holds "pid start-time": a recycled pid has another start time, so `down` can never
        signal a process that `up` did not start."""
        try:
            pid, started = self.pid_file.read_text().split()
            alive = _start_time(int(pid)) == started and not _is_zombie(int(pid))
        except (FileNotFoundError, ValueError):
            return None
        return int(pid) if alive else None


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _unprivileged_user() -> str | None:
    """PostgreSQL refuses to run as root: run it as Debian's `postgres` user then."""
    return "postgres" if os.geteuid() == 0 else None


def services(stack: Stack) -> list[Service]:
    pg_bin = install.postgres_bin_dir() or Path("/usr/lib/postgresql/15/bin")
    pg_dir = RUNTIME_DIR / "postgres"
    lk_dir = RUNTIME_DIR / "livekit"
    return [
        Service(
            "postgres",
            [(stack.postgres_port, False)],
            command=lambda: [
                str(pg_bin / "postgres"),
                "-D",
                str(pg_dir / "data"),
                "-p",
                str(stack.postgres_port),
                "-k",
                str(pg_dir / "run"),
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            prepare=lambda: _prepare_postgres(stack, pg_bin, pg_dir),
            user=_unprivileged_user(),
        ),
        Service(
            "redis",
            [(stack.redis_port, False)],
            command=lambda: [
                "redis-server",
                "--port",
                str(stack.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(RUNTIME_DIR / "redis"),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        ),
        Service(
            "livekit",
            [(stack.livekit_port, False), (stack.rtc_tcp_port, False), (stack.rtc_udp_port, True)],
            command=lambda: [
                str(install.livekit_server_binary(stack)),
                "--config",
                str(lk_dir / "livekit.yaml"),
                "--bind",
                "127.0.0.1",
            ],
            prepare=lambda: _prepare_livekit(lk_dir),
        ),
    ]


def cluster_services(stack: Stack) -> list[Service]:
    """The two cluster nodes, as services the same up/down/status machinery runs."""
    return [
        Service(
            node.service,
            [(node.port, False), (node.rtc_tcp_port, False), (node.rtc_udp_port, True)],
            command=lambda node=node: [  # type: ignore[misc]
                str(install.livekit_server_binary(stack)), "--config", str(node.config_path), "--bind", "127.0.0.1",
            ],
            prepare=lambda node=node: node.config_path.write_text(render(nodes.cluster_node_config(stack, node))),  # type: ignore[misc]
        )
        for node in nodes.nodes(stack)
    ]  # fmt: skip


def _prepare_livekit(lk_dir: Path) -> None:
    config = load_config(LIVEKIT_YAML)
    for key in short_secrets(config):
        print(f"! {LIVEKIT_YAML}: the secret of key {key!r} is under 32 characters", file=sys.stderr)
    (lk_dir / "livekit.yaml").write_text(render(node_config()))


def _prepare_postgres(stack: Stack, pg_bin: Path, pg_dir: Path) -> None:
    """First start only: a cluster whose superuser is POSTGRES_USER, like the official image makes."""
    user = _unprivileged_user()
    (pg_dir / "run").mkdir(parents=True, exist_ok=True)
    if user:
        entry = pwd.getpwnam(user)
        for path in (pg_dir, pg_dir / "run"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    if (pg_dir / "data" / "PG_VERSION").exists():
        return
    password_file = pg_dir / "initdb.pw"
    password_file.write_text(stack.postgres_password + "\n")
    if user:
        os.chown(password_file, pwd.getpwnam(user).pw_uid, -1)
    try:
        subprocess.run(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(pg_dir / "data"),
                "-U",
                stack.postgres_user,
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            check=True,
            user=user,
            stdout=subprocess.DEVNULL,
        )
    finally:
        password_file.unlink()


def _create_database(stack: Stack) -> None:
    pg_dir = RUNTIME_DIR / "postgres"
    marker = pg_dir / "data" / ".app-db-created"
    if marker.exists():
        return
    pg_bin = install.postgres_bin_dir() or Path("/usr/lib/postgresql/15/bin")
    subprocess.run(
        [
            str(pg_bin.parent / "bin" / "createdb"),
            "-h",
            str(pg_dir / "run"),
            "-p",
            str(stack.postgres_port),
            "-U",
            stack.postgres_user,
            stack.postgres_db,
        ],
        check=True,
        user=_unprivileged_user(),
    )
    marker.touch()


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


def _start(service: Service) -> int:
    service.dir.mkdir(parents=True, exist_ok=True)
    service.prepare()
    with service.log_file.open("ab") as log:
        process = subprocess.Popen(
            service.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=service.user,
            cwd=service.dir,
        )
    service.pid_file.write_text(f"{process.pid} {_start_time(process.pid)}")
    return process.pid


def _select(stack: Stack, names: list[str]) -> list[Service]:
    return [s for s in services(stack) if not names or s.name in names]


def _start_missing(selected: list[Service]) -> list[Service]:
    """Start those of `selected` not already running (all ports checked first); returns the started."""
    to_start = []
    for service in selected:
        if pid := service.running_pid():
            print(f"  {service.name:<9} already running (pid {pid})", file=sys.stderr)
        else:
            to_start.append(service)
    _check_ports_free(to_start)
    for service in to_start:
        pid = _start(service)
        print(f"  {service.name:<9} started (pid {pid}), log {service.log_file}", file=sys.stderr)
    return to_start


def up(stack: Stack, names: list[str] | None = None) -> None:
    install.ensure_packages()
    install.ensure_livekit_server(stack)
    to_start = _start_missing(_select(stack, names or []))
    _wait_healthy(stack, {s.name for s in _select(stack, names or [])})
    if any(s.name == "postgres" for s in to_start):
        _create_database(stack)


def _wait_healthy(stack: Stack, names: set[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        results = asyncio.run(check_all(stack))
        down = [r for r in results if not r.up and r.name in names]
        if not down:
            return
        for service in services(stack):
            if service.pid_file.exists() and not service.running_pid():
                raise StackError(f"{service.name} exited during start-up; last log lines:\n{_tail(service, 15)}")
        if time.monotonic() > deadline:
            lines = "\n".join(r.line() for r in down)
            raise StackError(f"not healthy after {START_TIMEOUT:.0f}s:\n{lines}")
        print(f"… waiting for {', '.join(r.name for r in down)}", file=sys.stderr, flush=True)
        time.sleep(1.0)


def down(stack: Stack, names: list[str] | None = None) -> None:
    _stop_services(_select(stack, names or []))


def cluster_up(stack: Stack) -> None:
    """Redis (shared) first, then both nodes; ready when each answers GET / with 200 OK."""
    up(stack, ["redis"])
    _start_missing(cluster_services(stack))
    deadline = time.monotonic() + START_TIMEOUT
    for node, service in zip(nodes.nodes(stack), cluster_services(stack), strict=True):
        while not asyncio.run(probe_livekit("127.0.0.1", node.port)).up:
            if not service.running_pid():
                raise StackError(f"{service.name} exited during start-up; last log lines:\n{_tail(service, 15)}")
            if time.monotonic() > deadline:
                raise StackError(f"{service.name} not ready after {START_TIMEOUT:.0f}s; see {service.log_file}")
            time.sleep(0.5)


def cluster_down(stack: Stack) -> None:
    _stop_services(cluster_services(stack))


def _stop_services(selected: list[Service]) -> None:
    for service in reversed(selected):
        pid = service.running_pid()
        if pid is None:
            service.pid_file.unlink(missing_ok=True)
            print(f"  {service.name:<9} not running", file=sys.stderr)
            continue
        _stop(pid)
        service.pid_file.unlink(missing_ok=True)
        print(f"  {service.name:<9} stopped (pid {pid})", file=sys.stderr)


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT: a clean shutdown first, never a leftover."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def status(stack: Stack) -> int:
    health = {r.name: r for r in asyncio.run(check_all(stack))}
    for service in services(stack):
        pid = service.running_pid()
        state = f"[native, pid {pid}]" if pid else "[not started by make up]"
        print(f"{health[service.name].line()}  {state}")
    return 0 if all(r.up for r in health.values()) else 1


def _tail(service: Service, lines: int) -> str:
    try:
        return "\n".join(service.log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log yet)"


def logs(stack: Stack, lines: int = 40) -> None:
    for service in services(stack):
        print(f"==> {service.log_file} <==\n{_tail(service, lines)}\n")
