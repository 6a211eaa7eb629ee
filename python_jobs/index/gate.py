"""Index only a state of `document_chunks` that a dbt run has tested, and found without error.

Reading the newest `run_results.json` is not enough: it shows what the last build covered,
not what the table holds now. A build that selected something else (`--select tag:ops`), or
a dbt killed after `document_chunks` was materialised but before its tests ran, would leave
results that pass while the table holds untested rows.

So the evidence is bound to the data. After every dbt run an `on-run-end` hook
(macros/chunk_certificate.sql) records a certificate in `audit.chunk_certificates`: the row
count and a fingerprint of every row of `document_chunks` as the run left it, with the
status of every node the run executed. Before reading the chunks, the embed job fingerprints
the table with the same query, in the same read-only connection it plans from (a dbt run
cannot change the table in between: DuckDB allows one writer, and a reader blocks it). Then:

- the newest run of that exact state that executed the tests of `document_chunks` decides;
  each test on its parents counts with its newest result in any run (the parents' current
  state), and a parent test that never ran (one whose inputs are all in the lineage, as
  `--select +document_chunks --indirect-selection cautious` picks them) means untested;
- an error-level failure in any of them (a test `fail` or `error`, a model that errored,
  `document_chunks` itself skipped) refuses the run, exit 3, naming the tests;
- no run that tested this state (a selection that left the tests out, a killed build, a table
  changed by hand) refuses the run too, saying how to test it. Warnings never refuse.

`--force` indexes anyway and says so in the run ledger. The watch mode and the orchestrator
call `check` the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.transform.results import LAST_BUILD_DIR

GATED_MODEL = "document_chunks"
CERTIFICATES_RELATION = "audit.chunk_certificates"
FAILING = frozenset({"fail", "error", "runtime error"})
PASSING = frozenset({"pass", "warn", "success"})
# The same query as macros/chunk_certificate.sql (chunk_fingerprint_sql); a test holds them equal.
FINGERPRINT_SQL = (
    "select count(*) as row_count, "
    "md5(coalesce(string_agg(md5(t::varchar), '' order by t.chunk_id), '')) as fingerprint "
    "from {relation} as t"
)
HOW_TO_CERTIFY = "Run `make chunks` (dbt build --select +document_chunks+) or `make build`."
CERTIFICATES_READ = 1000  # the newest runs looked at


class QualityGateError(PipelineError):
    """The chunks failed their tests, or no test run covered their current state."""

    exit_code = ExitCode.QUALITY_GATE


@dataclass
class GateResult:
    fingerprint: str
    row_count: int
    invocation_id: str | None = None  # the run whose tests decided
    failures: list[str] = field(default_factory=list)  # "test_name (status): message"
    untested: list[str] = field(default_factory=list)  # tests on the lineage the deciding run did not execute
    reason: str = ""  # why the gate refuses, in one sentence

    @property
    def passed(self) -> bool:
        return not self.reason

    def describe(self) -> str:
        if self.passed:
            return f"passed (dbt run {self.invocation_id} tested these {self.row_count:,} chunks)"
        return self.reason


def fingerprint(con: duckdb.DuckDBPyConnection, relation: str) -> tuple[int, str]:
    row_count, value = con.execute(FINGERPRINT_SQL.format(relation=relation)).fetchone()
    return int(row_count), str(value)


def check(con: duckdb.DuckDBPyConnection, relation: str, target_dir: Path, model: str = GATED_MODEL) -> GateResult:
    """Whether the state of `relation` (the chunk table) was tested and passed, read through `con`."""
    row_count, current = fingerprint(con, relation)
    result = GateResult(current, row_count)
    try:
        certificates = con.execute(
            f"select invocation_id, command, fingerprint, results from {CERTIFICATES_RELATION} "
            f"order by recorded_at desc limit {CERTIFICATES_READ}"
        ).fetchall()
    except duckdb.CatalogException:
        certificates = []
    matching = [row for row in certificates if row[2] == current]
    if not matching:
        result.reason = (
            f"no dbt run has tested the current state of {model} ({row_count:,} rows, fingerprint "
            f"{current[:12]}): the run that made it did not finish (killed, or not dbt). {HOW_TO_CERTIFY}"
        )
        return result

    manifest = _manifest(target_dir)
    model_id, ancestors, tests, touching = _lineage_and_tests(manifest, model)
    names = _names(manifest)
    own = {uid for uid, attached in tests.items() if attached == model_id}
    # The newest run of this exact state that ran the chunks' own tests decides; newer runs of the
    # same state that ran some of them count too (a failure there is a failure now).
    decided = False
    for invocation_id, command, _, statuses_json in matching:
        statuses = _statuses(statuses_json)
        result.failures += [
            f"{names.get(uid, uid)} ({status}) in dbt {command} {invocation_id}"
            for uid, status in statuses.items()
            if (uid in ancestors or uid in touching)
            and (status in FAILING or (uid == model_id and status == "skipped"))
        ]
        if own <= {uid for uid in own if statuses.get(uid) in PASSING | FAILING}:
            result.invocation_id, decided = invocation_id, True
            break
    if decided:
        # Tests on the parents that this run did not execute: their newest result in any run, which
        # tested the parents' current state.
        latest: dict[str, str] = {}
        for invocation_id, command, _, statuses_json in certificates:
            for uid, status in _statuses(statuses_json).items():
                if uid in touching and uid not in latest and status in PASSING | FAILING:
                    latest[uid] = status
                    if status in FAILING:
                        result.failures.append(f"{names.get(uid, uid)} ({status}) in dbt {command} {invocation_id}")
        result.untested = sorted(names.get(uid, uid) for uid in tests if uid not in latest)
    result.failures = list(dict.fromkeys(result.failures))
    if result.failures:
        result.reason = f"dbt runs found error-level failures on the current {model} or its parents"
    elif not decided:
        result.reason = (
            f"no dbt run has executed the tests of {model} on its current state ({row_count:,} rows): "
            f"the last build that made it selected them out, or was stopped before them. {HOW_TO_CERTIFY}"
        )
    elif result.untested:
        result.reason = (
            f"{len(result.untested)} test(s) on the parents of {model} have never run "
            f"({', '.join(result.untested[:5])}). {HOW_TO_CERTIFY}"
        )
    return result


def require_passing(result: GateResult, model: str = GATED_MODEL) -> GateResult:
    if not result.passed:
        listed = "".join(f"\n  {failure}" for failure in result.failures)
        raise QualityGateError(
            f"quality gate: nothing was indexed: {result.reason}{listed}\n"
            "Fix the data and build again, or pass --force to index anyway."
        )
    return result


def _manifest(target_dir: Path) -> dict:
    for folder in (target_dir, target_dir / LAST_BUILD_DIR):
        path = folder / "manifest.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise PipelineError(f"cannot read dbt artifact {path}: {exc}") from None
    raise QualityGateError(
        f"no dbt manifest in {target_dir}: the gate cannot tell which tests guard the chunks. {HOW_TO_CERTIFY}."
    )


def _lineage_and_tests(manifest: dict, model: str) -> tuple[str, set[str], dict[str, str], set[str]]:
    """The model's unique id; its lineage (itself and its ancestors); the tests that must have run on
    the lineage (test id -> the id of the node it is attached to, "" for a singular test): those whose
    every input is in the lineage, as `--select +document_chunks --indirect-selection cautious` picks
    them; and every test touching the lineage, whose failure blocks (a relationships test from a parent
    to a model outside the lineage included)."""
    nodes = {**manifest.get("nodes", {}), **manifest.get("unit_tests", {})}
    model_ids = [uid for uid, node in nodes.items() if node.get("resource_type") == "model" and node["name"] == model]
    if not model_ids:
        raise QualityGateError(f"{model} is not in the dbt manifest: the gate cannot check it")
    ancestors = _ancestors(model_ids[0], manifest.get("parent_map", {}))
    required, touching = {}, set()
    for uid, node in nodes.items():
        if node.get("resource_type") not in ("test", "unit_test"):
            continue
        depends = set(node.get("depends_on", {}).get("nodes", []))
        if not depends & ancestors:
            continue
        touching.add(uid)
        if depends <= ancestors:
            required[uid] = node.get("attached_node") or (node.get("model") and _model_id(nodes, node["model"])) or ""
    return model_ids[0], ancestors, required, touching


def _statuses(statuses_json: str) -> dict[str, str]:
    return {row["unique_id"]: row["status"] for row in json.loads(statuses_json)}


def _names(manifest: dict) -> dict[str, str]:
    nodes = {**manifest.get("nodes", {}), **manifest.get("unit_tests", {}), **manifest.get("sources", {})}
    return {uid: node.get("name", uid) for uid, node in nodes.items()}


def _model_id(nodes: dict, name: str) -> str | None:
    return next(
        (uid for uid, node in nodes.items() if node.get("resource_type") == "model" and node["name"] == name), None
    )


def _ancestors(node: str, parent_map: dict[str, list[str]]) -> set[str]:
    seen, stack = {node}, [node]
    while stack:
        for parent in parent_map.get(stack.pop(), []):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen
