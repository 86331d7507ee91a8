"""Renderers for a RunResult: a human table, one JSON object, JUnit XML. Each renders the result redacted
(backend.logging.redact: whole tokens, registered secrets), whatever a stage or a mode's figures put in it."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

from backend.logging import redact, redact_value
from bootstrap.result import RunResult, Status

MARKS = {Status.PASS: "✓", Status.FAIL: "✗", Status.SKIPPED: "-", Status.WARN: "!"}
# Figures whose summary each stage's line already gives (one stage per path): in the JSON only.
PER_STAGE_EXTRAS = {"paths", "cluster", "drill"}


def redacted(result: RunResult) -> RunResult:
    """`result` with every string in it redacted: stages' detail, cause and fix, the context, the extras."""
    stages = [dataclasses.replace(s, detail=redact(s.detail), cause=redact(s.cause), fix=redact(s.fix))
              for s in result.stages]  # fmt: skip
    return dataclasses.replace(result, stages=stages, context=redact_value(result.context),
                               extra=redact_value(result.extra))  # fmt: skip


def render_text(result: RunResult) -> str:
    result = redacted(result)
    header = "LiveKit infrastructure report"
    if result.context:
        header += "  (" + ", ".join(f"{k} {v}" for k, v in result.context.items()) + ")"
    width = max(len(s.detail) for s in result.stages) if result.stages else 0
    width = min(max(width, 20), 80)
    lines = [header]
    for stage in result.stages:
        detail = stage.detail if stage.status is not Status.SKIPPED else f"skipped: {stage.cause or 'not run'}"
        lines.append(f"  {MARKS[stage.status]} {stage.name:<9} {detail:<{width}} {stage.seconds:6.2f}s")
        if stage.status in (Status.FAIL, Status.WARN):
            lines.append(f"      cause: {stage.cause}" + (f"  [{stage.kind}]" if stage.kind else ""))
            lines.append(f"      fix:   {stage.fix}")
    for name, figures in result.extra.items():
        if name not in PER_STAGE_EXTRAS:
            lines.append(f"  {name}: " + json.dumps(figures, ensure_ascii=False))
    passed = sum(s.status is Status.PASS for s in result.stages)
    verdict = "PASS" if result.passed else "FAIL"
    if warned := sum(s.status is Status.WARN for s in result.stages):
        verdict += f" with {warned} warning{'s' if warned > 1 else ''}"
    lines.append(f"{verdict}  {passed}/{len(result.stages)} stages passed in {result.seconds:.2f}s")
    return "\n".join(lines)


def to_dict(result: RunResult) -> dict[str, object]:
    result = redacted(result)
    return {
        **result.extra,
        "status": result.status.value,
        "seconds": round(result.seconds, 3),
        "stages": [
            {
                "name": s.name,
                "status": s.status.value,
                "seconds": round(s.seconds, 3),
                "detail": s.detail,
                "cause": s.cause,
                "fix": s.fix,
                "kind": s.kind,
            }
            for s in result.stages
        ],
    }


def render_json(result: RunResult) -> str:
    return json.dumps(to_dict(result), ensure_ascii=False)


def render_junit(result: RunResult) -> str:
    result = redacted(result)
    failures = sum(s.status is Status.FAIL for s in result.stages)
    skipped = sum(s.status is Status.SKIPPED for s in result.stages)
    suite = ET.Element(
        "testsuite",
        name="bootstrap",
        tests=str(len(result.stages)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{result.seconds:.3f}",
    )
    for stage in result.stages:
        case = ET.SubElement(suite, "testcase", classname="bootstrap", name=stage.name, time=f"{stage.seconds:.3f}")
        if stage.status is Status.FAIL:
            failure = ET.SubElement(case, "failure", message=stage.cause)
            failure.text = f"{stage.cause}\nfix: {stage.fix}"
        elif stage.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", message=stage.cause or "not run")
        else:
            ET.SubElement(case, "system-out").text = stage.detail
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
