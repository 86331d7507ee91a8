"""The canary's alert rules: `promtool check rules` accepts them and `promtool test rules` runs their unit tests
(docs/prometheus/canary-rules.test.yml: each alert fires when it should and stays quiet when it should not)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from bootstrap.modes.canary.metrics import AUDIO_ROUND_TRIP_BUCKETS, PREFIX, CanaryMetrics
from bootstrap.stages import STAGES
from devstack.stack_env import REPO_ROOT

pytestmark = pytest.mark.unit

RULES_DIR = REPO_ROOT / "docs" / "prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="needs Debian's prometheus (make net-deps)"
)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", "canary-rules.yml"], cwd=RULES_DIR, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run(["promtool", "test", "rules", "canary-rules.test.yml"], cwd=RULES_DIR,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_canary_series_a_rule_names_is_exported() -> None:
    """A renamed metric must not leave a rule watching nothing (promtool cannot know what the canary exports)."""
    exported = {m.name for m in CanaryMetrics(["join"], 60).registry.collect()}
    exported |= {f"{name}_total" for name in exported} | {f"{name}_bucket" for name in exported}
    rules = (RULES_DIR / "canary-rules.yml").read_text()
    named = set(re.findall(rf"\b{PREFIX}_[a-z_]+", rules))
    assert named and named <= exported, named - exported
    assert "process_start_time_seconds" in rules  # the endpoint's process reads it for the canary (test_canary.py)


def test_the_audio_threshold_is_a_bucket_boundary() -> None:
    """histogram_quantile interpolates inside a bucket: at a boundary the threshold is exact."""
    rules = yaml.safe_load((RULES_DIR / "canary-rules.yml").read_text())["groups"][0]["rules"]
    expr = next(r["expr"] for r in rules if r["alert"] == "LiveKitCanaryAudioRoundTripSlow")
    assert float(expr.rsplit(">", 1)[1]) in AUDIO_ROUND_TRIP_BUCKETS


def test_the_dashboards_queries_name_only_exported_series() -> None:
    """docs/prometheus/canary-dashboard.json is not rendered here; at least each query names what the canary exports."""
    dashboard = json.loads((RULES_DIR / "canary-dashboard.json").read_text())
    exported = {m.name for m in CanaryMetrics([s.name for s in STAGES], 60).registry.collect()}
    exported |= {f"{name}_total" for name in exported} | {f"{name}_bucket" for name in exported}
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {name for expr in exprs for name in re.findall(rf"\b{PREFIX}_[a-z_]+", expr)}
    assert len(exprs) >= 9 and named and named <= exported, named - exported
