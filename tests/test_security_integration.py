"""Least privilege on the native stack, tried as another local user would. Each attack is planted as an
unprivileged user (`runuser -u postgres` / `nobody`), never as root: an attack planted by root proves nothing.
Only the checks of `down`'s own logic plant as root, and they say so."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from devstack.ports import owner_pid
from devstack.stack_env import REPO_ROOT, RUNTIME_DIR, Stack, load_stack
from tests.conftest import run_module

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are planted as other users: needs root (as CI runs)"),
]
PG_DIR = RUNTIME_DIR / "postgres"
PG_PID_FILE = PG_DIR / "postgres.pid"
SECRETS_FILE = REPO_ROOT / ".env.secrets"
PSQL = shutil.which("psql") or "/usr/bin/psql"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


def as_user(
    user: str, *command: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`command` run as `user` (runuser), from a directory every user may enter."""
    full_env = {"PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run(
        [RUNUSER, "-u", user, "--", *command],
        input=stdin,
        capture_output=True,
        text=True,
        cwd="/",
        env=full_env,
        timeout=30,
    )


def devstack(*args: str) -> subprocess.CompletedProcess[str]:
    result = run_module("devstack", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def secret(name: str) -> str:
    return dotenv_values(SECRETS_FILE).get(name) or "" if SECRETS_FILE.exists() else ""


def superuser_psql(*args: str) -> list[str]:
    """psql as the superuser `postgres` over the stack's socket, by peer authentication: the OS user postgres
    administers the database this way (devstack.postgres), no password, no prompt."""
    port = str(load_stack().postgres_port)
    return [PSQL, "-h", str(PG_DIR / "run"), "-p", port, "-U", "postgres", "-d", "postgres", "-w", *args]


def postgres_sql(sql: str) -> subprocess.CompletedProcess[str]:
    """SQL as the OS user postgres over the stack's socket (the way devstack administers the database)."""
    return as_user("postgres", *superuser_psql("-v", "ON_ERROR_STOP=1", "-tA", "-f", "-"), stdin=sql)


def victim_dir() -> Path:
    """A root-owned directory outside the repository, 0755: what an attacker wants to own."""
    path = Path(tempfile.mkdtemp(prefix="victim-"))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def postgres_restored(stack: Stack) -> Iterator[None]:
    """Whatever a test did to PostgreSQL, it runs again under `make up` afterwards: a postmaster that lost its
    pid file is stopped by its port, the layout repaired by `up`."""
    try:
        yield
    finally:
        run_module("devstack", "down", "postgres")
        if (pid := owner_pid(stack.postgres_port)) is not None:  # a postmaster whose pid file was replaced
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 10
            while owner_pid(stack.postgres_port) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
        devstack("up", "postgres")


@pytest.fixture
def fresh_postgres_data(stack: Stack) -> Iterator[None]:
    """PostgreSQL stopped and its data moved aside, so the next `up` runs initdb; put back afterwards."""
    devstack("down", "postgres")
    saved = PG_DIR / "data.saved-by-test"
    shutil.rmtree(saved, ignore_errors=True)
    (PG_DIR / "data").rename(saved)
    try:
        yield
    finally:
        run_module("devstack", "down", "postgres")
        shutil.rmtree(PG_DIR / "data", ignore_errors=True)
        saved.rename(PG_DIR / "data")
        devstack("up", "postgres")


@pytest.fixture
def stranger() -> Iterator[int]:
    """The pid of a process of `nobody`'s that nothing of ours started."""
    process = subprocess.Popen(["sleep", "600"], user="nobody", cwd="/")
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


# ---------------------------------------------------------------- local path to root


def test_planted_run_symlink_cannot_give_postgres_a_root_directory(stack: Stack) -> None:
    victim = victim_dir()
    try:
        with postgres_restored(stack):
            devstack("down", "postgres")
            as_user("postgres", "sh", "-c", f"rm -rf {PG_DIR}/run && ln -s {victim} {PG_DIR}/run")
            run_module("devstack", "up", "postgres", timeout=60)
            owner = victim.stat().st_uid
            if (PG_DIR / "run").is_symlink():
                (PG_DIR / "run").unlink()  # repair before the restore: this is the attack's leftover
        assert owner == 0, "the victim directory was handed to postgres"
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_planted_password_file_symlink_cannot_overwrite_a_root_file(stack: Stack, fresh_postgres_data: None) -> None:
    victim = victim_dir() / "precious"
    victim.write_text("original\n")
    try:
        as_user("postgres", "ln", "-s", str(victim), str(PG_DIR / "initdb.pw"))
        run_module("devstack", "up", "postgres", timeout=60)
        assert victim.read_text() == "original\n"
    finally:
        (PG_DIR / "initdb.pw").unlink(missing_ok=True)
        shutil.rmtree(victim.parent, ignore_errors=True)


# ---------------------------------------------------------------- down kills only its own


def test_pid_file_planted_by_postgres_cannot_get_a_stranger_killed(stack: Stack, stranger: int) -> None:
    pid = stranger
    with postgres_restored(stack):
        as_user("postgres", "sh", "-c", f"rm -f {PG_PID_FILE} && echo '{pid} {start_time(pid)}' > {PG_PID_FILE}")
        run_module("devstack", "down", "postgres")
        survived = alive(pid)
    assert survived, "make down killed a process it never started"


def test_down_checks_the_executable_not_just_pid_and_start_time(stack: Stack, stranger: int) -> None:
    """Root writes the pid file here (a check of `down`'s logic, not an attack): a recorded pid whose start
    time matches but whose executable and owner are not what `up` started must not be signalled."""
    pid = stranger
    with postgres_restored(stack):
        PG_PID_FILE.unlink(missing_ok=True)
        PG_PID_FILE.write_text(f"{pid} {start_time(pid)}")
        run_module("devstack", "down", "postgres")
        survived = alive(pid)
    assert survived


# ---------------------------------------------------------------- open doors


def app_query(stack: Stack, host: str, sql: str) -> list[str]:
    """psql's arguments for `sql` as the app role on `host` (a socket directory or an address), no prompt."""
    return ["-h", host, "-p", str(stack.postgres_port), "-U", stack.postgres_user, "-d", stack.postgres_db,
            "-w", "-tAc", sql]  # fmt: skip


def test_no_local_user_reaches_postgres_through_its_socket(stack: Stack) -> None:
    result = as_user("nobody", PSQL, *app_query(stack, str(PG_DIR / "run"), "select 1"))
    assert result.returncode != 0, "a local user opened a session through the socket"


def test_app_role_uses_the_generated_password_and_is_no_superuser(stack: Stack) -> None:
    query = app_query(stack, "127.0.0.1", "select rolsuper from pg_roles where rolname = current_user")
    committed = as_user("nobody", PSQL, *query, env={"PGPASSWORD": "app-dev-password"})
    assert committed.returncode != 0, "the once-committed password still opens the database"
    generated = as_user("nobody", PSQL, *query, env={"PGPASSWORD": secret("POSTGRES_PASSWORD")})
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip() == "f"


def test_redis_refuses_clients_without_the_password(stack: Stack) -> None:
    def ask(payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", stack.redis_port), timeout=2) as conn:
            conn.sendall(payload)
            time.sleep(0.2)
            return conn.recv(256)

    assert ask(b"PING\r\n").startswith(b"-NOAUTH")
    password = secret("REDIS_PASSWORD").encode()
    assert ask(b"AUTH " + password + b"\r\nPING\r\n") == b"+OK\r\n+PONG\r\n"


def test_no_native_service_runs_as_root(stack: Stack) -> None:
    owners = {}
    for name, port in (("postgres", stack.postgres_port), ("redis", stack.redis_port), ("livekit", stack.livekit_port)):
        pid = owner_pid(port)
        assert pid is not None, name
        owners[name] = os.stat(f"/proc/{pid}").st_uid
    assert all(uid != 0 for uid in owners.values()), owners


def test_ice_udp_port_listens_on_loopback_only(stack: Stack) -> None:
    listing = subprocess.run(["ss", "-ulnH", f"sport = :{stack.rtc_udp_port}"], capture_output=True, text=True).stdout
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listing.splitlines()}
    assert addresses == {"127.0.0.1"}, listing


def test_webhook_receiver_binds_loopback_by_default_on_the_native_stack() -> None:
    from bootstrap.__main__ import build_context, parse_args

    assert build_context(parse_args([])).webhook_host == "127.0.0.1"


def test_no_runtime_or_env_file_is_readable_by_others(stack: Stack) -> None:
    candidates = [p for p in RUNTIME_DIR.rglob("*") if p.is_file() and not p.is_symlink()]
    candidates += [REPO_ROOT / name for name in (".env", "backend/.env", "agent-runtime/.env", ".env.secrets")]
    readable = [str(p) for p in candidates if p.exists() and p.stat().st_mode & stat.S_IROTH]
    assert not readable


def test_no_command_line_shows_a_secret(stack: Stack) -> None:
    secrets = [stack.api_secret, *(v for v in (secret("POSTGRES_PASSWORD"), secret("REDIS_PASSWORD")) if v)]
    leaks = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            leaks += [f"{cmdline.parent.name}: {text[:80]}" for s in secrets if s in text]
    assert not leaks


# ---------------------------------------------------------------- shutdown and restarts


def test_postgres_stops_fast_with_a_client_connected(stack: Stack) -> None:
    with postgres_restored(stack):
        client = subprocess.Popen(
            superuser_psql("-c", "select pg_sleep(60)"),
            user="postgres",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        try:
            time.sleep(1.0)
            started = time.monotonic()
            run_module("devstack", "down", "postgres")
            took = time.monotonic() - started
        finally:
            client.kill()
            client.wait()
    assert took < 5.0, f"down took {took:.1f} s with one client connected"


def test_every_up_creates_the_database_if_it_is_missing(stack: Stack) -> None:
    dropped = postgres_sql(f"drop database if exists {stack.postgres_db} with (force);")  # as an interrupted first up
    assert dropped.returncode == 0, dropped.stderr
    try:
        devstack("up")
        listed = postgres_sql(f"select 1 from pg_database where datname = '{stack.postgres_db}';")
        assert listed.stdout.strip() == "1", listed.stderr
    finally:
        if postgres_sql(f"select 1 from pg_database where datname = '{stack.postgres_db}';").stdout.strip() != "1":
            postgres_sql(f"create database {stack.postgres_db};")
