"""The house rules, checked: dependencies flow bootstrap → devstack / backend / agent_runtime and never back,
no two modules share a name, browser pieces load only in browser mode, and devstack's CLI lists its verbs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.stack_env import REPO_ROOT
from tests.conftest import run_module

pytestmark = pytest.mark.unit
PACKAGES = {
    "backend": REPO_ROOT / "backend" / "backend",
    "agent_runtime": REPO_ROOT / "agent-runtime" / "agent_runtime",
    "devstack": REPO_ROOT / "devstack" / "devstack",
    "bootstrap": REPO_ROOT / "bootstrap" / "bootstrap",
}
# What each package may import of the project's own; anything else is a dependency flowing back.
ALLOWED = {
    "backend": set(),
    "agent_runtime": {"backend"},
    "devstack": set(),
    "bootstrap": {"backend", "agent_runtime", "devstack"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level
    ]
    return {name.split(".")[0] for name in names} & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_never_flow_back(package: str) -> None:
    offenders = {
        f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}"
        for path in PACKAGES[package].rglob("*.py")
        if (bad := imported_packages(path) - ALLOWED[package] - {package})
    }
    assert not offenders


def test_import_check_catches_a_backward_import(tmp_path: Path) -> None:
    """The check above can fail: a devstack-style module importing bootstrap is caught."""
    module = tmp_path / "bad.py"
    module.write_text("from bootstrap.runner import run\nimport devstack.health\n")
    assert imported_packages(module) - ALLOWED["devstack"] - {"devstack"} == {"bootstrap"}


def test_no_two_modules_share_a_name() -> None:
    seen: dict[str, list[str]] = {}
    for root in PACKAGES.values():
        for path in root.rglob("*.py"):
            if path.stem not in ("__init__", "__main__"):
                seen.setdefault(path.stem, []).append(str(path.relative_to(REPO_ROOT)))
        for package in (p for p in root.rglob("*") if p.is_dir() and (p / "__init__.py").exists()):
            seen.setdefault(package.name, []).append(str(package.relative_to(REPO_ROOT)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not shared


def test_a_single_run_never_imports_the_browser_pieces() -> None:
    probe = (
        "import sys, bootstrap.__main__ as m; m.select_stages(m.parse_args([]));"
        "print(sorted(n for n in sys.modules if n.startswith('bootstrap.browser')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "[]"
    probe = probe.replace("parse_args([])", "parse_args(['--browser'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert "bootstrap.browser.chromium" in out.stdout


def test_devstack_help_lists_every_verb() -> None:
    result = run_module("devstack", "--help", timeout=30)
    assert result.returncode == 0
    for verb in ("up", "down", "status", "logs", "health", "check-config", "cluster-up", "cluster-down"):
        assert f"\n  {verb} " in result.stdout, verb


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restart"], "invalid choice: 'restart'"),
        (["up", "mysql"], "unknown service(s) mysql; choose from postgres, redis, livekit"),
        (["health", "redis"], "only up and down take service names, not health"),
    ],
)
def test_devstack_bad_usage_exits_2_naming_the_cause(args: list[str], message: str) -> None:
    result = run_module("devstack", *args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_makefile_calls_devstack_for_the_stack_verbs() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    for verb in ("up", "down", "status", "logs", "health", "check-config", "cluster-up", "cluster-down"):
        assert f"\t@$(DEVSTACK) {verb}\n" in makefile, verb
    assert not (REPO_ROOT / "scripts" / "stack.sh").exists()
