#!/usr/bin/env python
"""How many property-based examples the test suite runs, and how many failed.

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_property_tests.py

Runs the Schemathesis test (every endpoint of the REST API's OpenAPI schema, in process) and the
Hypothesis tests over the IDX reader and the image loader, with Hypothesis' statistics on, and
prints JSON: Schemathesis' example and failure counts (from the report the test writes) and, per
Hypothesis test, its passing / failing / invalid example counts, plus pytest's outcome.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_schemathesis.py", "tests/test_idx_fuzz.py",
         "tests/test_preprocess.py::test_hypothesis_random_bytes",
         "tests/test_preprocess.py::test_hypothesis_mutated_images"]
STATS = re.compile(r"^(?P<test>\S+::\S+):\n(?:.*\n)*?\s+- (?P<passing>\d+) passing, (?P<failing>\d+) failing, "
                   r"and (?P<invalid>\d+) invalid", re.M)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="digitlab-property-") as tmp:
        report = Path(tmp) / "schemathesis.json"
        env = {**os.environ, "DIGITLAB_SCHEMATHESIS_REPORT": str(report)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--hypothesis-show-statistics", *TESTS], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        schemathesis = json.loads(report.read_text()) if report.is_file() else None
    hypothesis = [{"test": m["test"], "passing": int(m["passing"]), "failing": int(m["failing"]),
                   "invalid": int(m["invalid"])} for m in STATS.finditer(proc.stdout)
                  if "test_schemathesis" not in m["test"]]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    print(json.dumps({"pytest_exit_code": proc.returncode, "pytest_summary": summary,
                      "schemathesis": schemathesis, "hypothesis": hypothesis,
                      "command": "python scripts/measure_property_tests.py"}, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
