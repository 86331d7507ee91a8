"""The house rules, checked: dependencies flow bootstrap → devstack / backend / agent_runtime and never back,
no two modules share a name, browser pieces load only in browser mode, each mode keeps to its own room (the
engine and stages never import a mode, no mode imports another, the CLI imports only the registry and names no
mode), and devstack's CLI lists its verbs."""

from __future__ import annotations

import argparse
import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.context import RunContext
from bootstrap.modes import Mode, Plan
from bootstrap.stages import Stage
from devstack.stack_env import REPO_ROOT
from tests.conftest import run_module

pytestmark = pytest.mark.unit
PACKAGES = {
    "backend": REPO_ROOT / "backend" / "backend",
    "agent_runtime": REPO_ROOT / "agent-runtime" / "agent_runtime",
    "devstack": REPO_ROOT / "devstack" / "devstack",
    "bootstrap": REPO_ROOT / "bootstrap" / "bootstrap",
    "livekit_harness_pytest": REPO_ROOT / "pytest-livekit-harness" / "livekit_harness_pytest",
}
# What each package may import of the project's own; anything else is a dependency flowing back.
ALLOWED = {
    "backend": set(),
    "agent_runtime": {"backend"},
    "devstack": set(),
    "bootstrap": {"backend", "agent_runtime", "devstack"},
    # The test plugin runs the bootstrap as a program (python -m bootstrap), never imports it.
    "livekit_harness_pytest": {"backend", "agent_runtime", "devstack"},
}


def module_name(path: Path) -> str:
    """The dotted name of a module file of one of PACKAGES (a package's __init__.py is the package)."""
    for package, root in PACKAGES.items():
        if root in path.parents:
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is in none of {sorted(PACKAGES)}: name its module")


@functools.cache
def is_module(name: str) -> bool:
    """Whether `name` is a module or package of the project (not a function or class some module defines)."""
    top, *rest = name.split(".")
    base = PACKAGES[top].joinpath(*rest) if top in PACKAGES else None
    return base is not None and (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file())


def resolved(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name a `from` import reads from: a relative one (`from ..load import x` in a mode) resolved
    against the importing module, as Python does, so a rule cannot be dodged with dots."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(path: Path, module: str | None = None) -> set[str]:
    """Every module `path` imports, by absolute name; `from package import name` counts package.name too when that
    is a module of the project. `module`: the file's own dotted name (by default from where it lies), for its
    relative imports."""
    tree = ast.parse(path.read_text(), str(path))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in (n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)):
        base = resolved(node, module or module_name(path), path.name == "__init__.py") if node.level else node.module
        if base:
            names |= {base, *(f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}"))}
    return names


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)} & set(PACKAGES)


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
        "import sys, bootstrap.__main__ as m; m.plan(m.parse_args([]));"
        "print(sorted(n for n in sys.modules if n.startswith('bootstrap.browser')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "[]"
    probe = probe.replace("parse_args([])", "parse_args(['--browser'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert "bootstrap.browser.chromium" in out.stdout


DEVSTACK_VERBS = ("up", "down", "status", "logs", "health", "check-config", "cluster-up", "cluster-down", "paths-up",
                  "paths-down", "remote-lab-up", "remote-lab-down")  # fmt: skip


def test_devstack_help_lists_every_verb() -> None:
    result = run_module("devstack", "--help", timeout=30)
    assert result.returncode == 0
    for verb in DEVSTACK_VERBS:
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
    for verb in DEVSTACK_VERBS:
        assert f"\t@$(DEVSTACK) {verb}\n" in makefile, verb
    assert not (REPO_ROOT / "scripts" / "stack.sh").exists()


BOOTSTRAP = PACKAGES["bootstrap"]
MODES_DIR = BOOTSTRAP / "modes"


def mode_named(module: str) -> str:
    """The mode a module belongs to ("" for the registry, the interface, and anything outside modes/)."""
    if not module.startswith("bootstrap.modes."):
        return ""
    part = module.removeprefix("bootstrap.modes.").split(".")[0]
    return "" if part == "base" else part


def cross_mode_imports(path: Path, module: str | None = None) -> set[str]:
    """What a mode's module imports of another mode (nothing, for a module of no mode)."""
    own = mode_named(module or module_name(path))
    if not own:
        return set()
    return {name for name in imported_modules(path, module) if (other := mode_named(name)) and other != own}


# The top-level modules of bootstrap that serve one mode only and still stay at the top, each with why. Any other
# such module goes under its mode's folder (modes/NAME/), so what a mode is made of is seen in one place.
ONE_MODE_AT_THE_TOP = {
    # The canary runs it as `python -m bootstrap.metrics_endpoint`, its /metrics process. Under modes/canary/,
    # Python would first run bootstrap/modes/__init__.py, the registry, which imports every mode (~1.4 s here)
    # before the endpoint could listen; at the top it imports the standard library and prometheus_client only
    # and listens ~0.1 s after it starts.
    "metrics_endpoint": "canary",
}


def run_as_module(path: Path) -> set[str]:
    """The project's modules `path` names as a whole string (`[python, "-m", "bootstrap.metrics_endpoint"]`)."""
    tree = ast.parse(path.read_text(), str(path))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and is_module(n.value)}  # fmt: skip


@functools.cache
def project_uses() -> dict[str, set[str]]:
    """Each module of the project's packages → the project's modules it imports or runs (each file read once)."""
    files = [p for root in PACKAGES.values() for p in root.rglob("*.py")]
    return {module_name(path): imported_modules(path) | run_as_module(path) for path in files}


def users_of(name: str) -> set[str]:
    """The modules of the project's packages that import `name` (or a module inside it) or run it, but itself."""
    inside = (name, f"{name}.")
    return {
        user
        for user, used in project_uses().items()
        if not user.startswith(inside) and any(u == name or u.startswith(f"{name}.") for u in used)
    }


def test_a_module_serving_one_mode_lives_in_it() -> None:
    """Issue 23: a top-level module of bootstrap that only one mode uses belongs in that mode's folder."""
    rooms = (MODES_DIR, BOOTSTRAP / "stages")
    top = [p.stem for p in BOOTSTRAP.glob("*.py") if p.stem not in ("__init__", "__main__")]
    top += [p.name for p in BOOTSTRAP.iterdir() if (p / "__init__.py").is_file() and p not in rooms]
    one_mode = {}
    for name in top:
        modes = {mode_named(user) for user in users_of(f"bootstrap.{name}")}
        if len(modes) == 1 and "" not in modes:
            one_mode[name] = modes.pop()
    assert one_mode == ONE_MODE_AT_THE_TOP


def test_the_readme_layout_names_every_mode() -> None:
    """The README's layout shows where each mode lives (issue 23: where a new one goes)."""
    layout = (REPO_ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rooms = [p for p in MODES_DIR.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()]
    shown = {f"{p.name}/" if p.is_dir() else p.name for p in rooms}
    assert shown and {name for name in shown if name not in layout} == set()


def test_the_engine_and_stages_never_import_a_mode() -> None:
    engine = [p for p in BOOTSTRAP.rglob("*.py") if MODES_DIR not in p.parents and p.name != "__main__.py"]
    offenders = {
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in engine
        for name in imported_modules(path)
        if name == "bootstrap.modes" or name.startswith("bootstrap.modes.")
    }
    assert engine and not offenders


def test_no_mode_imports_another() -> None:
    offenders = {
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in MODES_DIR.rglob("*.py")
        for name in cross_mode_imports(path)
    }
    assert not offenders


def test_a_relative_import_of_another_mode_is_caught(tmp_path: Path) -> None:
    """The rule above reads relative imports as Python resolves them: dots do not hide another mode."""
    snippet = tmp_path / "snippet.py"
    snippet.write_text("from ..load import load_figures\nfrom .. import cluster\nfrom . import path_stages\n")
    offenders = cross_mode_imports(snippet, "bootstrap.modes.paths.snippet")
    assert offenders == {"bootstrap.modes.load", "bootstrap.modes.load.load_figures", "bootstrap.modes.cluster"}
    package = tmp_path / "__init__.py"  # in a package's own __init__, one dot is the package itself
    package.write_text("from .network_paths import PATHS\nfrom ..canary import loop\n")
    canary = {"bootstrap.modes.canary", "bootstrap.modes.canary.loop"}
    assert cross_mode_imports(package, "bootstrap.modes.paths") == canary


def test_the_cli_imports_only_the_registry_and_names_no_mode() -> None:
    from bootstrap.modes import MODES

    main = BOOTSTRAP / "__main__.py"
    assert {n for n in imported_modules(main) if n.startswith("bootstrap.modes")} == {"bootstrap.modes"}
    parser = argparse.ArgumentParser()
    MODES.add_arguments(parser)
    options = {action.dest for action in parser._actions} - {"help"}
    flags = {flag for action in parser._actions for flag in action.option_strings} - {"-h", "--help"}
    names = {mode.name for mode in MODES}
    tree = ast.parse(main.read_text())
    named = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} & options
    named |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} & (names | options)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    named |= {flag for flag in flags for text in strings if flag in text}
    assert options and flags and not named


def test_the_mode_checks_can_fail(tmp_path: Path) -> None:
    """The checks above catch what they claim: a CLI reading args.load, an engine module importing a mode."""
    cli = tmp_path / "cli.py"
    cli.write_text("from bootstrap.modes.load import LoadMode\nif args.load: pass\n")
    assert "bootstrap.modes.load" in imported_modules(cli)
    tree = ast.parse(cli.read_text())
    assert "load" in {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


class HelloMode(Mode):
    """A mode defined here, registered without editing any module of the project."""

    name = "hello"
    flag = "--hello"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--hello", metavar="WHO", help="say hello to WHO")

    def selected(self, args: argparse.Namespace) -> bool:
        return args.hello is not None

    def resolve(self, args: argparse.Namespace) -> str | None:
        return "--hello needs a name" if args.hello == "" else None

    def timeout(self, args: argparse.Namespace) -> float:
        return 7.0

    def plan(self, args: argparse.Namespace) -> Plan:
        async def greet(ctx: RunContext) -> str:
            return f"hello, {args.hello}"

        return Plan([Stage("greet", greet, 5.0)], lambda ctx: {"hello": args.hello})


def test_a_mode_registered_from_outside_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bootstrap import __main__ as cli
    from bootstrap.modes import MODES

    MODES.register(HelloMode())
    try:
        assert cli.parse_args(["--hello", "you"]).timeout == 7.0
        assert cli.main(["--hello", "you", "--json"]) == 0
        report = json.loads(capsys.readouterr().out.splitlines()[-1])
        with pytest.raises(SystemExit):
            cli.parse_args(["--hello", "you", "--load", "2"])
    finally:
        MODES.unregister("hello")
    assert [(s["name"], s["status"], s["detail"]) for s in report["stages"]] == [("greet", "pass", "hello, you")]
    assert report["hello"] == "you"
    assert "separate modes" in capsys.readouterr().err


def test_the_remote_mode_imports_nothing_of_devstack() -> None:
    """Issue 25: the mode that verifies a deployment elsewhere must work where only the harness is installed."""
    remote = MODES_DIR / "remote"
    modules = list(remote.rglob("*.py"))
    offenders = {
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in modules
        for name in imported_modules(path)
        if name == "devstack" or name.startswith("devstack.")
    }
    assert modules and not offenders
