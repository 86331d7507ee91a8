"""`python -m devstack VERB`: bring the development stack (livekit-server, Redis, PostgreSQL) up and down and
tell its health. Docker Compose runs it when a Docker engine answers (`docker info`), native processes
otherwise (`--runner` overrides the choice). The Makefile's env, up, down, status, logs, health,
check-config, cluster-up, cluster-down, paths-up and paths-down targets call this.

Exit codes: 0 done (health/status: everything up), 1 failed or a service down, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from devstack import compose, install, native, native_cluster, paths_lab, remote_lab
from devstack.credentials import CredentialsError
from devstack.env_files import create_env_files
from devstack.health import print_health
from devstack.install import InstallError
from devstack.native import StackError
from devstack.postgres import PostgresError
from devstack.safe_files import UnsafePathError
from devstack.server_config import ConfigError, load_config
from devstack.stack_env import LIVEKIT_YAML, Stack, StackEnvError, load_stack

VERBS = {
    "env": "create missing .env files (0600) from the examples and generate the development passwords",
    "up": "install what is missing, then start the stack (or the named services) and wait until healthy",
    "down": "stop exactly what `up` started (or the named services)",
    "status": "each service's state and health",
    "logs": "the last lines of each service's log",
    "health": "PostgreSQL, Redis and LiveKit readiness, one line each",
    "check-config": "check docker/livekit.yaml (YAML, keys, webhook key) before any server starts",
    "cluster-up": "two livekit-server nodes sharing Redis (then `python -m bootstrap --cluster`)",
    "cluster-down": "remove the cluster: its nodes and Redis (natively its hosts too, as cluster-up recorded them)",
    "paths-up": "the paths lab (root): a client host and a node host, its livekit-server behind a TLS front (then "
    "`python -m bootstrap --paths`); restores it when it is up",
    "paths-down": "remove the paths lab (what paths-up recorded)",
    "remote-lab-up": "the remote lab (root): a deployment this code did not configure, behind a TLS front with a "
    "local CA, and a client host that resolves its name (then `python -m bootstrap --url wss://lk.remote.test`)",
    "remote-lab-down": "remove the remote lab (what remote-lab-up recorded)",
    "install-native": "install what native runs and `make paths` need (Redis, PostgreSQL, iproute2, nftables, "
    "nginx, libnss3-tools, prometheus (promtool, the canary's rules), the pinned livekit-server); start nothing",
}
SERVICES = ("postgres", "redis", "livekit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    verbs = "\n".join(f"  {verb:<13} {text}" for verb, text in VERBS.items())
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=__doc__,
        epilog=f"verbs:\n{verbs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("verb", choices=VERBS, metavar="VERB", help="one of: " + ", ".join(VERBS))
    parser.add_argument("services", nargs="*", help=f"limit up/down to these: {', '.join(SERVICES)}")
    parser.add_argument(
        "--runner",
        choices=["auto", "compose", "native"],
        default="auto",
        help="auto (default): Compose when a Docker engine answers, else native",
    )
    args = parser.parse_args(argv)
    if unknown := set(args.services) - set(SERVICES):
        parser.error(f"unknown service(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVICES)}")
    if args.services and args.verb not in ("up", "down"):
        parser.error(f"only up and down take service names, not {args.verb}")
    return args


def check_config() -> int:
    load_config(LIVEKIT_YAML)
    print(f"✓ {LIVEKIT_YAML} is valid")
    return 0


def compose_verbs(args: argparse.Namespace) -> dict[str, Callable[[], int]]:
    return {
        "up": lambda: check_config() or compose.up(args.services),
        "down": lambda: compose.down(args.services),
        "status": lambda: compose.status() or print_health(load_stack()),
        "logs": compose.logs,
        "cluster-up": compose.cluster_up,
        "cluster-down": compose.cluster_down,
    }


def native_verbs(args: argparse.Namespace) -> dict[str, Callable[[], int | None]]:
    stack = load_stack()
    return {
        "up": lambda: native.up(stack, args.services),
        "down": lambda: native.down(stack, args.services),
        "status": lambda: native_status(stack),
        "logs": lambda: native.logs(stack),
        "cluster-up": lambda: native_cluster.up(stack),
        "cluster-down": lambda: native_cluster.down(stack),
    }


def native_status(stack: Stack) -> int:
    """Each service's state and health, then the paths lab's when one is recorded (the exit code: the stack's)."""
    code = native.status(stack)
    if paths_lab.RECORD.exists():
        paths_lab.status(stack)
    return code


def remove_network_leftovers() -> None:
    """What `make down` also removes: the labs, the cluster (its processes, hosts and bridge) and the paths lab
    (its node, TLS front and hosts), and with the last of them the root namespace's guard."""
    stack = load_stack()
    native_cluster.down(stack, quiet=True)
    paths_lab.down(stack)
    remote_lab.down(stack, quiet=True)


def use_compose(runner: str, verb: str) -> bool:
    if runner != "auto":
        return runner == "compose"
    answers = compose.engine_answers()
    if not answers and verb == "up":
        print("No Docker engine answered (docker info): running the stack natively.", file=sys.stderr)
    return answers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.verb == "env":
            return create_env_files()
        if args.verb == "health":
            return print_health(load_stack())
        if args.verb == "check-config":
            return check_config()
        if args.verb in ("paths-up", "paths-down"):  # native whatever runs the stack: namespaces of this machine
            stack = load_stack()
            paths_lab.up(stack) if args.verb == "paths-up" else paths_lab.down(stack)
            return 0
        if args.verb in ("remote-lab-up", "remote-lab-down"):  # native too: namespaces of this machine
            stack = load_stack()
            remote_lab.up(stack) if args.verb == "remote-lab-up" else remote_lab.down(stack)
            return 0
        if args.verb == "install-native":
            install.ensure_packages(paths=True)
            install.ensure_livekit_server(load_stack())
            return 0
        verbs = compose_verbs(args) if use_compose(args.runner, args.verb) else native_verbs(args)
        status = verbs[args.verb]() or 0
        if args.verb == "down" and not args.services:
            remove_network_leftovers()
        return status
    except (ConfigError, StackEnvError, CredentialsError) as exc:
        print(f"✗ configuration error: {exc}", file=sys.stderr)
        return 2
    except (StackError, InstallError, PostgresError, UnsafePathError) as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `python -m devstack logs | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
