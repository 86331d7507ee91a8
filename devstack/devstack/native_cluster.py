"""`make cluster-up` natively: the cluster's hosts (devstack.nodes) as network namespaces on a bridge, its
Redis and its two nodes each on its own host, as their unprivileged accounts. Needs root (namespaces); without
it, it says so and starts nothing. The root namespace's guard (devstack.root_guard) comes and goes with it (and
with the other labs).

Like every lab (devstack.lab_record), what it creates is written to its record (.runtime/cluster-lab.json)
before it exists, and `cluster-down` (and `make down`, and the sweep `cluster-up` starts with) stops the
cluster's services and removes exactly what the record names, under the lab's one lock: two lifecycle calls never
interleave, and a namespace or link merely named like the cluster's (`lkh-c-…`: another checkout's cluster, a
neighbour's link) is never touched; `cluster-up` refuses to take over one it did not record, naming it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time

from devstack import install, native, netns, nodes, root_guard
from devstack.credentials import load_credentials
from devstack.health import probe_livekit, redis_command
from devstack.lab_record import LabRecord
from devstack.native import Service, StackError
from devstack.processes import Account
from devstack.stack_env import RUNTIME_DIR, Stack

START_TIMEOUT = 60.0
REDIS_DIR = RUNTIME_DIR / "cluster-redis"
LAB = LabRecord("cluster")  # its lock, and the record of what it created: all the sweep ever removes


def services(stack: Stack) -> list[Service]:
    """The cluster's Redis and nodes, as services the native machinery starts, recognises and stops."""
    redis = nodes.redis_host(stack)
    return [
        Service("cluster-redis", [], "redis",
                lambda: [shutil.which("redis-server") or "redis-server", str(REDIS_DIR / "redis.conf")],
                prepare=lambda account: native.write_redis_config(stack, REDIS_DIR, redis.address, account),
                namespace=redis.namespace,
                directory=REDIS_DIR),
        *(_node_service(stack, node) for node in nodes.nodes(stack)),
    ]  # fmt: skip


def _node_service(stack: Stack, node: nodes.Node) -> Service:
    command = native.livekit_command(stack, node.config_path, (node.address, "127.0.0.1"))

    def prepare(account: Account) -> None:
        config = nodes.cluster_node_config(stack, node, load_credentials().redis_password)
        native.prepare_livekit(node.dir, config, account)

    return Service(node.service, [], "livekit", lambda: command, prepare=prepare, namespace=node.host.namespace)


def _hosts(stack: Stack) -> list[netns.LanHost]:
    node_hosts = [node.host for node in nodes.nodes(stack)]
    return [nodes.redis_host(stack), *node_hosts, nodes.worker_host(stack), nodes.client_host(stack)]


def up(stack: Stack) -> None:
    """The cluster made afresh (what an earlier cluster-up left, killed or not, swept first), ready; half-made is
    swept again."""
    if reason := netns.missing_capability("cluster-up"):
        raise StackError(f"the cluster's hosts are network namespaces; {reason}")
    install.ensure_packages(paths=True)
    install.ensure_livekit_server(stack)
    with LAB.locked():
        for removed in LAB.made_afresh(lambda: _sweep(stack), lambda: _create(stack)):
            print(f"  removed   {removed} (an earlier cluster)", file=sys.stderr)


def _create(stack: Stack) -> None:
    lan, hosts = nodes.lan(stack), _hosts(stack)
    LAB.record(lan, hosts)  # refuses a name it did not make: another checkout's cluster
    netns.create_lan(lan, hosts)
    root_guard.update(stack)  # this machine's address on the bridge (the webhook receiver's) answers the hosts only
    print(f"  hosts     {', '.join(f'{h.name} {h.address}' for h in hosts)} on {lan.bridge}", file=sys.stderr)
    redis, *node_services = services(stack)
    native.start_missing([redis])
    _wait(lambda: _redis_ready(stack), redis, "Redis")
    native.start_missing(node_services)
    for node, service in zip(nodes.nodes(stack), node_services, strict=True):
        _wait(lambda node=node: asyncio.run(probe_livekit(node.address, node.port)).up, service, node.service)


def service(stack: Stack, name: str) -> Service:
    """One of the cluster's services by name: "cluster-redis", "livekit-a", "livekit-b"."""
    return next(s for s in services(stack) if s.name == name)


def start(stack: Stack, name: str) -> None:
    """Start one of the cluster's services again (after a drill stopped it) and wait until it is ready."""
    started = service(stack, name)
    native.start_missing([started], quiet=True)
    if name == "cluster-redis":
        _wait(lambda: _redis_ready(stack), started, "Redis")
        return
    node = next(n for n in nodes.nodes(stack) if n.service == name)
    _wait(lambda: asyncio.run(probe_livekit(node.address, node.port)).up, started, name)


def kill(stack: Stack, name: str) -> int:
    """SIGKILL one of the cluster's services, as a host that dies does (no shutdown, sockets reset); its pid."""
    pid = service(stack, name).running_pid()
    if pid is None:
        raise StackError(f"{name} is not running: start the cluster with `make cluster-up`")
    os.kill(pid, signal.SIGKILL)
    return pid


def stop(stack: Stack, name: str) -> None:
    native.stop_services([service(stack, name)], quiet=True)


def repair(stack: Stack) -> list[str]:
    """Undo whatever a drill may have left when it was interrupted: no host cut off, every service running
    (started again where not). Returns what it had to do. Under the lab's lock: never half-way through an up or
    a down."""
    with LAB.locked():
        return _repair(stack)


def _repair(stack: Stack) -> list[str]:
    done = []
    for node in nodes.nodes(stack):
        netns.isolate(node.host, False)
    for name in ("cluster-redis", *(node.service for node in nodes.nodes(stack))):
        if service(stack, name).running_pid() is None:
            start(stack, name)
            done.append(f"started {name}")
    return done


def cut_off(host: netns.LanHost, cut: bool) -> None:
    """Drop every packet to and from `host` (a host that vanishes: no reset, no reply), or stop dropping."""
    netns.isolate(host, cut)


def _redis_ready(stack: Stack) -> bool:
    host = nodes.redis_host(stack)
    try:
        reply = asyncio.run(redis_command(host.address, stack.redis_port, load_credentials().redis_password, "PING"))
    except OSError:
        return False
    return reply == b"+PONG"


def _wait(ready: object, service: Service, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():  # type: ignore[operator]
        if not service.running_pid():
            raise StackError(f"{what} exited during start-up; last log lines:\n{native.tail(service, 15)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not ready after {START_TIMEOUT:.0f}s; see {service.log_file}")
        time.sleep(0.2)


def down(stack: Stack, *, quiet: bool = False) -> None:
    if netns.missing_capability() is not None or not shutil.which("ip"):
        native.stop_services(services(stack), quiet=quiet)  # what this user may stop; the hosts need root
    LAB.down(lambda: _sweep(stack, quiet=quiet), quiet=quiet, left_up="cluster lab")


def _sweep(stack: Stack, *, quiet: bool = True) -> list[str]:
    """Stop the cluster's services (each only if it is the process we recorded), then remove exactly the
    namespaces and links the record names, whichever of them exist; then the record, and the root guard is
    rewritten for the labs still up. Returns what it removed."""
    native.stop_services(services(stack), quiet=quiet)
    return LAB.remove_recorded(stack)
