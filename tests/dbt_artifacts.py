"""Reading dbt's run artifacts in tests."""

from __future__ import annotations

import json
from pathlib import Path


def results_by_status(target: Path) -> dict[str, set[str]]:
    """Node names in run_results.json grouped by status (pass, fail, warn, error, skipped, success)."""
    run_results = json.loads((target / "run_results.json").read_text(encoding="utf-8"))
    grouped: dict[str, set[str]] = {}
    for result in run_results["results"]:
        parts = result["unique_id"].split(".")
        # unit_test.<package>.<model>.<name>; every other node: <type>.<package>.<name>[.<hash>]
        name = parts[3] if parts[0] == "unit_test" else parts[2]
        grouped.setdefault(result["status"], set()).add(name)
    return grouped


def names_starting_with(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n.startswith(prefix)}
