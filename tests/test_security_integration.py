"""Least privilege on the native stack, tried as another local user would. An attack is planted as an
unprivileged user (`runuser -u postgres` / `nobody`): where that account cannot plant at all (the directories root
writes in are root's, 0750), the test asserts the refusal itself. Where the point is the code's own logic (a link
an older layout left behind, a pid file naming a stranger), root plants, the test says so, and it asserts that
the plant is in place and is what the code reads before it checks the outcome."""

from __future__ import annotations

import contextlib
import os
import pwd
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

from devstack import postgres
from devstack.ports import owner_pid
from devstack.processes import PidRecord
from devstack.safe_files import write_private
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


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


# ---------------------------------------------------------------- local path to root


def owner_mode_text(path: Path) -> tuple[int, int, int, str]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), path.read_text() if path.is_file() else ""


def test_service_accounts_cannot_plant_where_root_writes(stack: Stack) -> None:
    """Each service's directory holds root's configs, log and pid file: root's, the service's group may only read
    it, so its account can put nothing there (no symlink, no file, no replaced pid file)."""
    for account, root_file in (("postgres", PG_PID_FILE), ("redis", RUNTIME_DIR / "redis" / "redis.conf"),
                               ("livekit", RUNTIME_DIR / "livekit" / "livekit.yaml")):  # fmt: skip
        directory = root_file.parent
        assert root_file.exists(), f"{root_file}: nothing to attack (is the native stack up?)"
        before = owner_mode_text(root_file)
        try:
            for attack in (f"ln -s /etc/shadow {directory}/planted", f"echo planted > {directory}/planted",
                           f"rm -f {root_file}", f"echo '1 2 3 /bin/sh' > {root_file}"):  # fmt: skip
                done = as_user(account, "sh", "-c", attack)
                assert done.returncode != 0 and "Permission denied" in done.stderr, f"as {account}: {attack}: {done}"
            assert owner_mode_text(root_file) == before
        finally:
            with contextlib.suppress(FileNotFoundError):
                (directory / "planted").unlink()  # where the refusal failed


def test_links_left_where_root_writes_are_replaced_never_followed(stack: Stack) -> None:
    """Root plants (the code's own logic: an older layout, or an attacker who once could, left links behind)
    a symlink at every path `up postgres` writes, makes or chowns in the service directory, each to a victim of
    root's; `up` must replace each link with a file or directory of its own and leave every victim as it was."""
    victim = victim_dir()
    victims = {name: victim / name for name in ("pg_hba.conf", ".pg_hba.conf.new", "pg_ident.conf", "postgres.log",
                                                 "postgres.pid")}  # fmt: skip
    for path in victims.values():
        path.write_text(f"root's own {path.name}\n")
        path.chmod(0o644)
    before = {name: owner_mode_text(path) for name, path in [*victims.items(), ("run", victim)]}
    try:
        with postgres_restored(stack):
            devstack("down", "postgres")
            for name, target in [*victims.items(), ("run", victim)]:
                planted = PG_DIR / name
                if planted.is_dir() and not planted.is_symlink():
                    shutil.rmtree(planted)
                planted.unlink(missing_ok=True)
                planted.symlink_to(target)
                assert planted.is_symlink() and planted.resolve() == target.resolve()
            started = run_module("devstack", "up", "postgres", timeout=90)
            after = {name: owner_mode_text(path) for name, path in [*victims.items(), ("run", victim)]}
            left = [name for name in [*victims, "run"] if (PG_DIR / name).is_symlink()]
            for name in left:  # the attack's leftovers, removed before the restore
                (PG_DIR / name).unlink()
        assert started.returncode == 0, started.stderr
        assert after == before, "root wrote, chmod'ed or chowned through a link"
        assert left == [], f"links still in place (so never replaced): {left}"
        assert (PG_DIR / "run").is_dir() and (PG_DIR / "pg_hba.conf").is_file() and PG_PID_FILE.is_file()
    finally:
        shutil.rmtree(victim, ignore_errors=True)


# ---------------------------------------------------------------- down kills only its own


@pytest.fixture
def real_pid_file(stack: Stack) -> Iterator[str]:
    """The running postgres's own pid file, put back after the test: `down` finds a planted record not its own,
    removes it as stale and stops nothing, so PostgreSQL itself runs on throughout."""
    original = PG_PID_FILE.read_text()
    try:
        yield original
    finally:
        write_private(PG_PID_FILE, original)
        assert run_module("devstack", "status").returncode == 0


@pytest.mark.parametrize("owner", ["nobody", "postgres"])
def test_down_signals_no_stranger_whose_record_looks_like_postgres(
    stack: Stack, real_pid_file: str, owner: str
) -> None:
    """Root writes the pid file (a check of `down`'s own logic; postgres cannot, see above): the record is
    exactly what `up` writes for PostgreSQL (4 fields, its account, its executable) with a stranger's pid and
    start time. The stranger runs another executable (and, as nobody, is another owner): it must survive."""
    stranger = subprocess.Popen(["sleep", "600"], user=owner, cwd="/")
    try:
        account = pwd.getpwnam("postgres")
        postgres_exe = os.path.realpath(postgres.command(stack)[0])
        planted = PidRecord(stranger.pid, start_time(stranger.pid), account.pw_uid, postgres_exe)
        assert PidRecord.parse(real_pid_file) is not None and PidRecord.parse(real_pid_file).exe == postgres_exe  # type: ignore[union-attr]
        write_private(PG_PID_FILE, str(planted))
        assert PidRecord.parse(PG_PID_FILE.read_text()) == planted  # the parser accepts it: the identity check decides
        down = run_module("devstack", "down", "postgres")
        survived = alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()
    assert down.returncode == 0, down.stderr
    assert survived, f"make down killed a process it never started ({owner}'s sleep)"
    assert "postgres  not running" in down.stderr  # it judged the record not its own


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


def test_no_running_process_shows_a_secret_on_its_command_line(stack: Stack) -> None:
    """A snapshot of /proc: it sees the long-lived processes (the three services among them), not a short-lived
    one such as `lk` (see the next test)."""
    secrets = [stack.api_secret, secret("POSTGRES_PASSWORD"), secret("REDIS_PASSWORD")]
    assert all(secrets), "a secret is missing from .env.secrets: nothing to look for"
    leaks, seen = [], set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            seen.add(int(cmdline.parent.name))
            leaks += [f"{cmdline.parent.name}: {text[:80]}" for s in secrets if s in text]
    services = {owner_pid(port) for port in (stack.postgres_port, stack.redis_port, stack.livekit_port)}
    assert None not in services and services <= seen, "the services' command lines were not read"
    assert not leaks


def test_lk_gets_the_secret_from_its_environment_never_its_command_line(stack: Stack, tmp_path: Path) -> None:
    """`lk` runs for a moment, so no snapshot of /proc can see it: a stand-in `lk` first on PATH records the argv
    and environment the code gives it: the token script (scripts/livekit-token.sh) and the benchmark's lk_args."""
    record = tmp_path / "lk-argv"
    fake = tmp_path / "bin" / "lk"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n'
                    f'[ -n "$LIVEKIT_API_SECRET" ] && echo "secret in env" >> {record}\necho token\n')  # fmt: skip
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "LIVEKIT_API_KEY": stack.api_key,
           "LIVEKIT_API_SECRET": stack.api_secret}  # fmt: skip
    done = subprocess.run(["scripts/livekit-token.sh", "a-room", "a-user"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0 and done.stdout == "token\n", done.stderr
    argv = record.read_text().splitlines()
    assert argv[:2] == ["token", "create"] and argv[-1] == "secret in env", argv  # the script ran our lk
    assert not [arg for arg in argv[:-1] if stack.api_secret in arg], argv

    from bench.bench import lk_args

    assert not [arg for arg in lk_args(str(fake)) if stack.api_secret in arg]


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
