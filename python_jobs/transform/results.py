"""Record what every dbt run through our make targets did: invocations, node results, freshness.

Three ops tables, all dbt sources (models/staging/ops/_ops__sources.yml):

    dbt_invocations       one row per dbt command: command, exit code, counts, where the results came from
    dbt_node_results      one row per node and invocation: status, timing, failures, rows, owner,
                          compiled SQL path, failing-rows table and a sample of its rows
    dbt_source_freshness  one row per source table and `dbt source freshness` run: lag and SLA

dbt writes `run_results.json` (and `sources.json`) only when it finishes. A build that fails
half way through still finishes and writes them; a dbt process that is killed or crashes does
not. So dbt also writes its file log as JSON lines (DBT_LOG_FORMAT_FILE=json), flushed as each
node finishes: when the artifact of this invocation is missing, the node results are read from
the `NodeFinished` events of this process in that log instead, and nothing that finished is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from python_jobs.common.ledger import Ledger, record_run
from python_jobs.common.warehouse import connect

RECORDED_COMMANDS = frozenset({"build", "run", "test", "seed", "snapshot", "source"})
FAILING_ROWS_SAMPLE = 5  # rows of a failing test's stored failures kept with its result
# A sensitive test's failing rows are personal data by construction (a no_pii failure is a row holding an
# email address): the sample kept with its result, which the ops marts, alerts, the webhook and the
# dashboard copy, shows each of its columns masked but the ones that say which row it is and why it failed.
# The failing-rows table in the warehouse keeps the rows themselves. A test is sensitive when it is one of
# these generic tests or has `meta: {sensitive: true}`; `meta: {sample_columns: [...]}` names the columns
# it may show unmasked.
SENSITIVE_TESTS = frozenset({"no_pii"})
SAMPLE_COLUMNS = {"no_pii": ("chunk_id", "doc_id", "pii_kind", "pii_action")}
MASK = "[masked]"
# The artifacts of the last command that ran tests are kept aside in target/last_build/: `dbt show`
# and `dbt docs generate` overwrite target/run_results.json, and the index's quality gate reads them.
TESTING_COMMANDS = frozenset({"build", "test"})
LAST_BUILD_DIR = "last_build"
GROUPS_FILE = "models/_groups.yml"
DEFAULT_OWNER_GROUP = "platform_ops"  # owns what has no group: hooks, and sources without meta.group

INVOCATIONS = {
    "invocation_id": "varchar",
    "command": "varchar",
    "args": "varchar",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "elapsed_seconds": "double",
    "exit_code": "integer",
    "status": "varchar",
    "results_from": "varchar",
    "dbt_version": "varchar",
    "nodes_total": "integer",
    "nodes_failed": "integer",
    "nodes_warned": "integer",
    "nodes_skipped": "integer",
}
NODE_RESULTS = {
    "invocation_id": "varchar",
    "unique_id": "varchar",
    "resource_type": "varchar",
    "node_name": "varchar",
    "status": "varchar",
    "severity": "varchar",
    "failures": "bigint",
    "rows_affected": "bigint",
    "execution_seconds": "double",
    "started_at": "timestamptz",
    "completed_at": "timestamptz",
    "message": "varchar",
    "tested_node": "varchar",
    "group_name": "varchar",
    "owner_name": "varchar",
    "owner_email": "varchar",
    "original_file_path": "varchar",
    "compiled_path": "varchar",
    "failing_rows_relation": "varchar",
    "failing_rows_sample": "varchar",
}
SOURCE_FRESHNESS = {
    "invocation_id": "varchar",
    "unique_id": "varchar",
    "source_name": "varchar",
    "table_name": "varchar",
    "status": "varchar",
    "max_loaded_at": "timestamptz",
    "snapshotted_at": "timestamptz",
    "lag_seconds": "double",
    "warn_after_seconds": "double",
    "error_after_seconds": "double",
    "message": "varchar",
    "group_name": "varchar",
    "owner_name": "varchar",
    "owner_email": "varchar",
}
PERIOD_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def ledgers(ops_schema: str) -> dict[str, Ledger]:
    return {
        "invocations": Ledger(ops_schema, "dbt_invocations", INVOCATIONS),
        "node_results": Ledger(ops_schema, "dbt_node_results", NODE_RESULTS, ("invocation_id", "unique_id")),
        "source_freshness": Ledger(
            ops_schema, "dbt_source_freshness", SOURCE_FRESHNESS, ("invocation_id", "unique_id")
        ),
    }


@dataclass
class Invocation:
    """One dbt process as the wrapper saw it: what it was asked, when it ran, how it exited."""

    args: list[str]
    pid: int
    log_file: Path
    log_offset: int  # where this process's lines start in the log
    started_at: datetime
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    exit_code: int = 0

    @property
    def command(self) -> str:
        words = [a for a in self.args if not a.startswith("-")][:2]
        return " ".join(words[:2]) if words[:1] == ["source"] else (words[0] if words else "")


@dataclass
class Captured:
    invocation: dict[str, Any]
    nodes: list[dict[str, Any]]
    freshness: list[dict[str, Any]]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Error-level results, for alerts: failed tests, errored models, sources past error_after."""
        return [n for n in self.nodes + self.freshness if n["status"] in ("fail", "error", "runtime error")]


def is_recorded(args: list[str]) -> bool:
    return bool(args) and args[0] in RECORDED_COMMANDS


def capture(warehouse: Path, ops_schema: str, target_dir: Path, run: Invocation) -> Captured:
    """Read this invocation's results and write them to the ops tables in one transaction."""
    events = list(_log_events(run.log_file, run.log_offset, run.pid, run.started_at))
    invocation_id = next((e["info"]["invocation_id"] for e in events), None)
    manifest = _read_json(target_dir / "manifest.json") or {}
    owners = _Owners(manifest)
    artifact = "sources.json" if run.command == "source freshness" else "run_results.json"
    results = _read_json(target_dir / artifact)
    if results and invocation_id and results.get("metadata", {}).get("invocation_id") != invocation_id:
        results = None  # an earlier run's file: this process died before writing its own
    invocation_id = invocation_id or (results or {}).get("metadata", {}).get("invocation_id")
    if invocation_id is None:
        invocation_id = f"unlogged-{run.pid}-{run.started_at:%Y%m%dT%H%M%S}"  # dbt died before logging anything

    if run.command == "source freshness":
        freshness = [_freshness_row(invocation_id, r, owners) for r in (results or {}).get("results", [])]
        if not results:
            freshness = [_freshness_from_event(invocation_id, e, owners) for e in events if _finished(e)]
        nodes = []
    else:
        nodes = [_node_row(invocation_id, r, owners) for r in (results or {}).get("results", [])]
        if not results:
            nodes = [_node_from_event(invocation_id, e, owners) for e in events if _finished(e)]
        freshness = []

    with connect(warehouse) as con:
        for row in nodes:
            row["failing_rows_sample"] = _failing_rows_sample(con, row, _sample_columns(owners.node(row["unique_id"])))
    statuses = [r["status"] for r in nodes + freshness]
    invocation = {
        "invocation_id": invocation_id,
        "command": run.command,
        "args": " ".join(run.args),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "elapsed_seconds": (run.finished_at - run.started_at).total_seconds(),
        "exit_code": run.exit_code,
        "status": "success" if run.exit_code == 0 else ("failed" if results else "crashed"),
        "results_from": artifact if results else ("dbt.log" if events else "none"),
        "dbt_version": (results or {}).get("metadata", {}).get("dbt_version"),
        "nodes_total": len(statuses),
        "nodes_failed": sum(s in ("fail", "error", "runtime error") for s in statuses),
        "nodes_warned": sum(s == "warn" for s in statuses),
        "nodes_skipped": sum(s == "skipped" for s in statuses),
    }
    tables = ledgers(ops_schema)
    record_run(
        warehouse,
        [
            (tables["invocations"], [invocation]),
            (tables["node_results"], nodes),
            (tables["source_freshness"], freshness),
        ],
    )
    return Captured(invocation, nodes, freshness)


def group_owners(target_dir: Path, project_dir: Path) -> dict[str, tuple[str | None, str | None]]:
    """Each dbt group's owner as (name, email): from the manifest dbt last wrote, or, before dbt has
    parsed the project, from the groups file it would parse (models/_groups.yml)."""
    for folder in (target_dir, target_dir / LAST_BUILD_DIR):
        manifest = _read_json(folder / "manifest.json")
        if manifest and manifest.get("groups"):
            groups = manifest["groups"].values()
            break
    else:
        groups = (yaml.safe_load((project_dir / GROUPS_FILE).read_text(encoding="utf-8")) or {}).get("groups", [])
    return {g["name"]: ((g.get("owner") or {}).get("name"), (g.get("owner") or {}).get("email")) for g in groups}


class _Owners:
    """Who owns a node: its group's owner; a test's is its model's; a source's is its meta.group's."""

    def __init__(self, manifest: Mapping[str, Any]):
        self.nodes = {
            **manifest.get("nodes", {}),
            **manifest.get("sources", {}),
            **manifest.get("unit_tests", {}),
        }
        self.groups = {g["name"]: g.get("owner", {}) for g in manifest.get("groups", {}).values()}

    def node(self, unique_id: str) -> Mapping[str, Any]:
        return self.nodes.get(unique_id, {})

    def tested_node(self, unique_id: str) -> str | None:
        node = self.node(unique_id)
        if node.get("resource_type") not in ("test", "unit_test"):
            return None
        if node.get("attached_node"):
            return node["attached_node"]
        parents = node.get("depends_on", {}).get("nodes", [])
        return parents[0] if parents else None

    def group(self, unique_id: str) -> str:
        node = self.node(unique_id)
        tested = self.tested_node(unique_id)
        if tested and not node.get("group"):
            return self.group(tested)
        meta = node.get("meta") or node.get("config", {}).get("meta") or {}
        return node.get("group") or node.get("config", {}).get("group") or meta.get("group") or DEFAULT_OWNER_GROUP

    def owner(self, unique_id: str) -> dict[str, Any]:
        group = self.group(unique_id)
        owner = self.groups.get(group, {})
        return {"group_name": group, "owner_name": owner.get("name"), "owner_email": owner.get("email")}


def _node_row(invocation_id: str, result: Mapping[str, Any], owners: _Owners) -> dict[str, Any]:
    uid = result["unique_id"]
    node = owners.node(uid)
    timing = {t["name"]: t for t in result.get("timing", [])}
    adapter = result.get("adapter_response") or {}
    return {
        "invocation_id": invocation_id,
        "unique_id": uid,
        "resource_type": node.get("resource_type") or uid.split(".")[0],
        "node_name": node.get("name") or uid.split(".")[-1],
        "status": str(result.get("status")),
        "severity": (node.get("config") or {}).get("severity") if node.get("resource_type") == "test" else None,
        "failures": result.get("failures"),
        "rows_affected": adapter.get("rows_affected"),
        "execution_seconds": result.get("execution_time"),
        "started_at": _timestamp(timing.get("compile", timing.get("execute", {})).get("started_at")),
        "completed_at": _timestamp(timing.get("execute", {}).get("completed_at")),
        "message": result.get("message"),
        "tested_node": owners.tested_node(uid),
        **owners.owner(uid),
        "original_file_path": node.get("original_file_path"),
        "compiled_path": node.get("compiled_path"),
        "failing_rows_relation": _failing_rows_relation(result, node),
    }


def _node_from_event(invocation_id: str, event: Mapping[str, Any], owners: _Owners) -> dict[str, Any]:
    info, result = event["data"]["node_info"], event["data"]["run_result"]
    timing = {t["name"]: t for t in result.get("timing_info", [])}
    as_result = {
        "unique_id": info["unique_id"],
        "status": result.get("status") or info.get("node_status"),
        "failures": result.get("num_failures"),
        "execution_time": result.get("execution_time"),
        "message": result.get("message"),
        "adapter_response": result.get("adapter_response"),
        "timing": list(timing.values()),
    }
    return _node_row(invocation_id, as_result, owners)


def _freshness_row(invocation_id: str, result: Mapping[str, Any], owners: _Owners) -> dict[str, Any]:
    uid = result["unique_id"]
    node = owners.node(uid)
    criteria = result.get("criteria") or node.get("freshness") or {}
    return {
        "invocation_id": invocation_id,
        "unique_id": uid,
        "source_name": node.get("source_name") or uid.split(".")[-2],
        "table_name": node.get("name") or uid.split(".")[-1],
        "status": str(result.get("status")),
        "max_loaded_at": _timestamp(result.get("max_loaded_at")),
        "snapshotted_at": _timestamp(result.get("snapshotted_at")),
        "lag_seconds": result.get("max_loaded_at_time_ago_in_s"),
        "warn_after_seconds": _period_seconds(criteria.get("warn_after")),
        "error_after_seconds": _period_seconds(criteria.get("error_after")),
        "message": result.get("error") or result.get("message"),
        **owners.owner(uid),
    }


def _freshness_from_event(invocation_id: str, event: Mapping[str, Any], owners: _Owners) -> dict[str, Any]:
    info, result = event["data"]["node_info"], event["data"]["run_result"]
    as_result = {"unique_id": info["unique_id"], "status": result.get("status"), "message": result.get("message")}
    return _freshness_row(invocation_id, as_result, owners)


def _failing_rows_relation(result: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    """The table where `store_failures` kept a test's failing rows (only tests that did not pass)."""
    if node.get("resource_type") != "test" or str(result.get("status")) not in ("fail", "warn", "error"):
        return None
    if not (node.get("config") or {}).get("store_failures"):
        return None
    return result.get("relation_name") or node.get("relation_name")


def _sample_columns(node: Mapping[str, Any]) -> frozenset[str] | None:
    """The columns a test's failing-rows sample may show as they are: None (all of them) unless the test is
    sensitive (see SENSITIVE_TESTS)."""
    config = node.get("config") or {}
    meta = {**(node.get("meta") or {}), **(config.get("meta") or {})}
    test = (node.get("test_metadata") or {}).get("name")
    if not (meta.get("sensitive") or test in SENSITIVE_TESTS):
        return None
    shown = meta.get("sample_columns", SAMPLE_COLUMNS.get(test, ()))
    return frozenset(str(name) for name in shown) if isinstance(shown, list | tuple) else frozenset()


def _failing_rows_sample(con, row: Mapping[str, Any], shown: frozenset[str] | None = None) -> str | None:
    """A few of the test's stored failing rows as JSON; with `shown`, every other column's value masked."""
    relation = row.get("failing_rows_relation")
    if not relation:
        return None
    try:
        cursor = con.execute(f"select * from {relation} limit {FAILING_ROWS_SAMPLE}")
    except Exception:  # the table is dropped or renamed since: the result keeps its name
        return None
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    if shown is not None:
        rows = [{name: value if name in shown else MASK for name, value in r.items()} for r in rows]
    return json.dumps(rows, default=str)


def _log_events(log_file: Path, offset: int, pid: int, since: datetime) -> Iterator[dict[str, Any]]:
    """JSON log events of one dbt process, from where its lines start. dbt rotates its log at 10 MB
    (`dbt.log` goes to `dbt.log.1`, `.1` to `.2` ...), also during a build: a rotated file written to
    since the process started holds its first lines. Those files are read whole, oldest first, keeping
    the process's events since it started; `dbt.log` itself from `offset` if nothing was rotated."""
    start = since.timestamp()
    backups = sorted(
        (p for p in log_file.parent.glob(log_file.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    rotated = [p for p in backups if p.stat().st_mtime >= start]
    parts = [*((p, 0) for p in rotated), (log_file, 0 if rotated else offset)]
    first = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    for path, position in parts:
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            handle.seek(position if handle.seek(0, 2) >= position else 0)
            for line in handle:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a text-format line, or the half-written last line of a killed process
                info = event.get("info", {}) if isinstance(event, dict) else {}
                if info.get("pid") == pid and (not rotated or str(info.get("ts", "")) >= first):
                    yield event


def _finished(event: Mapping[str, Any]) -> bool:
    return event["info"].get("name") == "NodeFinished" and "run_result" in event.get("data", {})


def _period_seconds(criterion: Mapping[str, Any] | None) -> float | None:
    if not criterion or criterion.get("count") is None or criterion.get("period") not in PERIOD_SECONDS:
        return None
    return float(criterion["count"]) * PERIOD_SECONDS[criterion["period"]]


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
