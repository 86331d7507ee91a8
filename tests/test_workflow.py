"""The GitHub Actions smoke gate is valid (actionlint) and runs the Compose path with the JUnit upload."""

import subprocess

import pytest
import yaml
from dotenv import dotenv_values

from devstack.stack_env import REPO_ROOT, STACK_ENV

pytestmark = pytest.mark.unit
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "bootstrap.yml"
ACTIONLINT = REPO_ROOT / ".tools" / f"actionlint-{dotenv_values(STACK_ENV)['ACTIONLINT_VERSION']}" / "actionlint"


def test_actionlint_accepts_the_workflow() -> None:
    binary = ACTIONLINT
    result = subprocess.run([str(binary), str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ nope.x }}\n")
    binary = ACTIONLINT
    assert subprocess.run([str(binary), str(broken)], capture_output=True).returncode == 1


def test_workflow_runs_make_bootstrap_and_uploads_junit() -> None:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["bootstrap"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert 'make bootstrap BOOTSTRAP_ARGS="--junit reports/bootstrap.xml"' in runs
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "reports/bootstrap.xml"
    assert upload["if"] == "always()"
