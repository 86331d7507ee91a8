#!/usr/bin/env bash
# make mutation: mutmut over the modules that hold protections (the webhook receiver and its listener, tokens,
# pid files, root's file writes, the test ranges' checks, health's 406), against the fast unit tests that cover
# them; not in CI (about 4 minutes on 2 cores).
#
# mutmut imports what it mutates from mutants/src/<package>, so it needs the packages directly under src/; ours sit
# one level down (backend/backend, devstack/devstack). It runs in a scratch copy with that layout
# (.runtime/mutation): nothing in the working tree is ever mutated, so a run can go on beside other work.
# Configuration: [tool.mutmut] in pyproject.toml. Afterwards: `cd .runtime/mutation && ../../.venv/bin/mutmut
# results` lists the survivors, `mutmut show NAME` shows one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=.runtime/mutation
rm -rf "$work"
mkdir -p "$work/src" "$work/docker"
cp -r backend/backend devstack/devstack "$work/src/"
cp -r tests "$work/tests"
cp pyproject.toml stack.env "$work/"
cp docker/livekit.yaml "$work/docker/"
find "$work" -name __pycache__ -prune -exec rm -rf {} +
cd "$work"
started=$(date +%s)
"$root/.venv/bin/mutmut" run --max-children "$(nproc)" >mutmut.log 2>&1 || {
  echo "error: mutmut failed; its output: $work/mutmut.log" >&2
  tail -n 20 mutmut.log >&2
  exit 1
}
"$root/.venv/bin/mutmut" export-cicd-stats >/dev/null
"$root/.venv/bin/python" - "$(($(date +%s) - started))" <<'PY'
import json, sys
stats = json.load(open("mutants/mutmut-cicd-stats.json"))
killed, survived, untested = stats["killed"] + stats["timeout"], stats["survived"], stats["no_tests"]
tried = killed + survived
print(f"mutation: {stats['total']} mutants in {sys.argv[1]} s: {killed} killed, {survived} survived, "
      f"{untested} in code no selected test runs; score {killed / tried:.0%} of the mutants the tests reach "
      f"({killed / stats['total']:.0%} of all)")
PY
