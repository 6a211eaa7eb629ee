"""Refuse to index chunks that the latest dbt build found broken.

Reads dbt's own artifacts: `run_results.json` for what passed and failed, `manifest.json`
for the lineage. An error-level failure (test status `fail` or `error`, a model that
errored, `document_chunks` itself skipped) on `document_chunks` or any of its ancestors
blocks indexing; warnings do not. `dbt show` and `dbt docs generate` overwrite
`run_results.json` too, so the gate reads the newest artifacts of a command that runs
tests: `target/` itself, or the copy `python_jobs.transform.dbt` keeps in `target/last_build/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.transform.results import LAST_BUILD_DIR, TESTING_COMMANDS

GATED_MODEL = "document_chunks"
FAILING = frozenset({"fail", "error", "runtime error"})


class QualityGateError(PipelineError):
    """The chunks failed their tests; indexing them would serve bad data."""

    exit_code = ExitCode.QUALITY_GATE


@dataclass
class GateResult:
    artifacts: Path | None
    failures: list[str] = field(default_factory=list)  # "test_name (status): message"
    note: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures


def check(target_dir: Path, model: str = GATED_MODEL) -> GateResult:
    artifacts = _latest_testing_artifacts(target_dir)
    if artifacts is None:
        return GateResult(None, note=f"no dbt build artifacts in {target_dir}: the quality gate checked nothing")
    manifest = _read(artifacts / "manifest.json")
    run_results = _read(artifacts / "run_results.json")
    nodes = {**manifest.get("nodes", {}), **manifest.get("unit_tests", {}), **manifest.get("sources", {})}
    model_ids = [uid for uid, node in nodes.items() if node.get("resource_type") == "model" and node["name"] == model]
    if not model_ids:
        return GateResult(artifacts, note=f"{model} is not in {artifacts / 'manifest.json'}")
    lineage = _ancestors(model_ids[0], manifest.get("parent_map", {}))

    failures = []
    for result in run_results.get("results", []):
        uid, status = result["unique_id"], str(result.get("status", ""))
        node = nodes.get(uid, {})
        depends = set(node.get("depends_on", {}).get("nodes", []))
        on_lineage = uid in lineage or bool(depends & lineage)
        broken = status in FAILING or (uid == model_ids[0] and status == "skipped")
        if on_lineage and broken:
            message = (result.get("message") or "").strip().splitlines()
            failures.append(f"{node.get('name', uid)} ({status}){': ' + message[0] if message else ''}")
    return GateResult(artifacts, failures)


def require_passing(target_dir: Path, model: str = GATED_MODEL) -> GateResult:
    result = check(target_dir, model)
    if not result.passed:
        listed = "\n  ".join(result.failures)
        raise QualityGateError(
            f"the latest dbt build ({result.artifacts / 'run_results.json'}) has error-level failures on "
            f"{model} or its parents, so nothing was indexed:\n  {listed}\n"
            "Fix the data and run `make build`, or pass --force to index anyway."
        )
    return result


def _latest_testing_artifacts(target_dir: Path) -> Path | None:
    candidates = []
    for folder in (target_dir, target_dir / LAST_BUILD_DIR):
        results = folder / "run_results.json"
        if results.is_file() and (folder / "manifest.json").is_file():
            metadata = _read(results)
            if metadata.get("args", {}).get("which") in TESTING_COMMANDS:
                candidates.append((metadata.get("metadata", {}).get("generated_at", ""), folder))
    return max(candidates)[1] if candidates else None


def _ancestors(node: str, parent_map: dict[str, list[str]]) -> set[str]:
    seen, stack = {node}, [node]
    while stack:
        for parent in parent_map.get(stack.pop(), []):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read dbt artifact {path}: {exc}") from None
