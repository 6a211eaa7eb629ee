"""`rp watch` end to end: real files, real dbt (in process), the real model, a real LanceDB index.

The worlds start from `watch_world`: the indexed world after one `rp watch --once`, which built everything
once and recorded it, so each test's cycles build only what its changes affect. Most tests run `--once`
cycles in this process; one runs the long-running watcher as a process of its own and edits under it.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from python_jobs.index.embed import embed
from python_jobs.index.store import VectorIndex
from python_jobs.land.freshness import EVENTS, FreshnessTracker
from python_jobs.observe.alerts import read_alerts
from python_jobs.search.retriever import Retriever
from python_jobs.transform import build_state
from python_jobs.watch.cycle import CycleContext, run_cycle
from python_jobs.watch.watcher import relevant
from tests.conftest import shared_world
from tests.worlds import (
    DOCUMENT_CHAIN,
    EDITED_SECTION,
    KETTLE,
    PROJECT_DIR,
    TO_ADD,
    TO_DELETE,
    Workspace,
    add_sample_doc,
    edit_section,
)

ONE_THREAD = {"RP_DBT_THREADS": "1"}  # the suite runs two workers on two cores
PRICE_MATCH = "faq/faq-price-match.md"
RENAMED = "faq/price-match-renamed.md"
KETTLE_EDIT = "Since the zebrafinch firmware the kettle pairs with the Brightwater app over Bluetooth."
BROKEN = "faq/no-front-matter.md"
PII_DOC = """---
doc_id: faq-refund-desk
title: "Refunds: who to contact"
doc_type: faq
owner: customer-support
access_level: public
updated_at: 2026-10-01T09:00:00Z
---
# Refunds: who to contact

## Who handles my refund?

Write to jane.doe.refunds@example.com and ask the quokkadesk refunds team.
"""


@pytest.fixture(scope="session")
def watch_world(indexed_world: Workspace, shared_dir: Path) -> Workspace:
    """The indexed world after one `rp watch --once`: built once through the watcher, its inputs recorded."""

    def build(ws: Workspace) -> None:
        indexed_world.copy(ws.root)
        once(ws)

    return shared_world(shared_dir, "watch", build)


def once(ws: Workspace, **env: str) -> dict:
    """One `rp watch --once --json` cycle in this process; its JSON line."""
    ran = ws.rp("watch", "--once", "--json", check=False, **ONE_THREAD, **env)
    assert ran.stdout.strip(), ran.stderr
    return json.loads(ran.stdout) | {"exit_code": ran.returncode, "stderr": ran.stderr}


def events(ws: Workspace) -> dict[str, dict]:
    """The latest freshness event of each landing path."""
    columns = list(EVENTS)
    rows = ws.query(f"select {', '.join(columns)} from ops.freshness_events order by recorded_at, seen_at")
    latest = {}
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        latest[record["path"]] = record
    return latest


def fts(ws: Workspace, text: str) -> list[str]:
    return Retriever(ws.settings()).search(text, "fts", 10).doc_ids()


# --- one cycle ---------------------------------------------------------------------------------


def test_edits_adds_removals_renames_and_a_quarantined_file_are_one_cycle_of_the_document_chain(watch_world, tmp_path):
    ws = watch_world.copy(tmp_path / "ws")
    docs = ws.landing / "docs"
    edit_section(docs / KETTLE, EDITED_SECTION, KETTLE_EDIT)
    add_sample_doc(ws, TO_ADD)
    (docs / TO_DELETE).unlink()
    (docs / PRICE_MATCH).rename(docs / RENAMED)
    (docs / BROKEN).write_text("# No front matter\n\nThis file lacks its metadata block.\n", encoding="utf-8")
    before = VectorIndex(ws.index).live().version

    cycle = once(ws)

    assert cycle["exit_code"] == 0 and cycle["status"] == "published", cycle
    assert cycle["changes"] == {"added": 2, "changed": 1, "removed": 2, "quarantined": 1}
    # Documents touch only the retrieval chain: no shop model, and far fewer nodes than the whole build.
    assert "source:docs.documents+" in cycle["build"] and "shop" not in cycle["build"], cycle["build"]
    assert 0 < cycle["nodes"] < 80
    version = cycle["index_version"]
    assert version > before and VectorIndex(ws.index).live().version == version

    assert fts(ws, "zebrafinch firmware")[:1] == ["faq-brightwater-variable-temp-kettle"]
    assert "faq-tidewell-presspro-steam-iron" in fts(ws, "Tidewell PressPro steam iron tap water")
    assert "faq-store-pickup" not in fts(ws, "store pickup loading area vehicle")
    assert "faq-price-match" in fts(ws, "price match")  # renamed: still searchable

    found = events(ws)
    assert set(found) == {f"docs/{p}" for p in (KETTLE, TO_ADD, TO_DELETE, PRICE_MATCH, RENAMED, BROKEN)}
    outcomes = {path.removeprefix("docs/"): (e["change"], e["outcome"], e["doc_id"]) for path, e in found.items()}
    assert outcomes == {
        KETTLE: ("changed", "published", "faq-brightwater-variable-temp-kettle"),
        TO_ADD: ("added", "published", "faq-tidewell-presspro-steam-iron"),
        TO_DELETE: ("removed", "deleted", "faq-store-pickup"),
        PRICE_MATCH: ("removed", "deleted", "faq-price-match"),
        RENAMED: ("added", "published", "faq-price-match"),
        BROKEN: ("added", "quarantined", None),
    }
    assert "front matter" in found[f"docs/{BROKEN}"]["detail"]
    for path, event in found.items():
        assert event["runner"] == "watch" and event["run_id"] == cycle["cycle_id"]
        assert event["index_version"] == version, path
        assert event["ingested_at"] <= event["built_at"] <= event["embedded_at"] <= event["published_at"], path
        if event["change"] != "removed":
            mtime = datetime.fromtimestamp((ws.landing / path).stat().st_mtime, UTC)
            assert abs(event["modified_at"] - mtime) < timedelta(milliseconds=1), path
            assert event["modified_at"] <= event["published_at"]

    again = once(ws)  # nothing changed: no build, no embedding, well under a second of work
    assert again["status"] == "no-op" and again["nodes"] == 0 and "no build" in again["build"]
    assert sum(again["timings"].values()) < 5


def test_a_failing_test_blocks_the_batch_and_the_fix_goes_through(watch_world, tmp_path):
    ws = watch_world.copy(tmp_path / "ws")
    doc = ws.landing / "docs" / "faq" / "faq-refund-desk.md"
    doc.write_text(PII_DOC, encoding="utf-8")  # a public document with an email address: no_pii fails
    served = VectorIndex(ws.index).live().version

    blocked = once(ws)

    assert blocked["status"] == "blocked" and blocked["exit_code"] == 1, blocked
    (alert,) = blocked["alerts"]
    assert alert["kind"] == "dbt_test_failed" and "no_pii" in alert["subject"]
    assert alert["owner"] == "Knowledge and Retrieval Team" and alert["runbook"] == "docs/runbook.md#failing-data-test"
    assert read_alerts(ws.root / "alerts.jsonl")[-1]["alert_id"] == alert["alert_id"]
    assert VectorIndex(ws.index).live().version == served  # the last good version still serves
    assert "faq-refund-desk" not in fts(ws, "quokkadesk refunds")
    event = events(ws)["docs/faq/faq-refund-desk.md"]
    assert event["outcome"] == "blocked" and event["published_at"] is None and "no_pii" in event["detail"]

    doc.write_text(PII_DOC.replace("jane.doe.refunds@example.com", "the refunds desk"), encoding="utf-8")
    fixed = once(ws)

    assert fixed["status"] == "published" and fixed["exit_code"] == 0, fixed
    assert fts(ws, "quokkadesk refunds")[:1] == ["faq-refund-desk"]
    rows = ws.query(
        "select outcome, index_version from ops.freshness_events "
        "where path = 'docs/faq/faq-refund-desk.md' order by seen_at"
    )
    assert rows == [("superseded", None), ("published", fixed["index_version"])]


# --- stopped, killed, restarted ------------------------------------------------------------------


def test_a_stopped_or_killed_cycle_is_finished_by_the_next_run_as_a_batch_run_would(watch_world, tmp_path):
    ws = watch_world.copy(tmp_path / "ws")
    batch = watch_world.copy(tmp_path / "batch")
    for world in (ws, batch):
        edit_section(world.landing / "docs" / KETTLE, EDITED_SECTION, KETTLE_EDIT)
        add_sample_doc(world, TO_ADD)
        (world.landing / "docs" / TO_DELETE).unlink()

    # SIGTERM during a cycle: it stops after its current step (here the ingest); the changes stay open.
    stopped = run_cycle(CycleContext(ws.settings(), io.StringIO(), stop_requested=lambda: True))
    assert stopped.status == "abandoned"
    opened = events(ws)
    assert {e["outcome"] for e in opened.values()} == {"pending"} and len(opened) == 3
    assert all(e["ingested_at"] and e["built_at"] is None for e in opened.values())

    # kill -9 after the next run's dbt build, before it embeds.
    killed = ws.job("watch", "--once", RP_FAILPOINT="watch_after_build", **ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert {e["outcome"] for e in events(ws).values()} == {"pending"}

    restarted = once(ws)

    assert restarted["status"] == "published" and "no build" in restarted["build"], restarted
    finished = events(ws)
    assert {p: e["event_id"] for p, e in finished.items()} == {p: e["event_id"] for p, e in opened.items()}
    assert all(finished[p]["seen_at"] == opened[p]["seen_at"] for p in opened)  # the wait counts from the edit
    assert {e["outcome"] for e in finished.values()} == {"published", "deleted"}
    assert all(e["built_at"] is not None for e in finished.values())

    # The batch path on the same edits: the same chunks, and the same index rows.
    batch.ingest(check=True)
    batch.dbt("build", *DOCUMENT_CHAIN, check=True)
    embed(batch.settings())
    chunks = "select * from knowledge.document_chunks order by chunk_id"
    assert ws.query(chunks) == batch.query(chunks)
    assert indexed(ws) == indexed(batch)


def indexed(ws: Workspace) -> list[tuple]:
    columns = ["chunk_id", "content_hash", "metadata_hash"]
    rows = VectorIndex(ws.index).open_live().search().select(columns).limit(None).to_arrow()
    return sorted(zip(*(rows.column(c).to_pylist() for c in columns), strict=True))


# --- the long-running watcher --------------------------------------------------------------------


class Watcher:
    """`rp watch --json` as a process of its own, its JSON lines read as they come."""

    def __init__(self, ws: Workspace, **env: str):
        self.log = ws.root / "watch.jsonl"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "python_jobs", "watch", "--json"],
            cwd=PROJECT_DIR,
            env={**ws.env, **ONE_THREAD, **env},
            stdout=self.log.open("w", encoding="utf-8"),
            stderr=(ws.root / "watch.stderr").open("w", encoding="utf-8"),
        )

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def cycles(self) -> list[dict]:
        return [line for line in self.lines() if line["event"] == "cycle"]

    def wait_for(self, check, timeout: float = 180.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text() + self.log.with_suffix(".stderr").read_text()
            if check(self.lines()):
                return self.lines()
            time.sleep(0.2)
        raise AssertionError(f"timed out; the watcher said: {self.lines()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def searchable(ws: Workspace, text: str, doc_id: str, timeout: float = 120.0) -> float:
    """Seconds until an fts search for `text` returns `doc_id` from the published index."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if doc_id in fts(ws, text):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{doc_id} not searchable for {text!r} after {timeout} s")


def test_the_watcher_publishes_an_edit_a_burst_in_one_cycle_and_stops_on_sigterm(watch_world, tmp_path):
    ws = watch_world.copy(tmp_path / "ws")
    watcher = Watcher(ws, RP_VARS="{watch: {debounce_ms: 1500, max_delay_ms: 20000}}")
    try:
        watcher.wait_for(lambda lines: any(line["event"] == "model_loaded" for line in lines))
        assert [c["status"] for c in watcher.cycles()] == ["no-op"]  # the catch-up cycle found nothing

        # One watcher per workspace, and the pipeline waits for it too; batch jobs run beside it.
        second = ws.rp("watch", "--once")
        assert second.returncode == 75 and "is keeping this workspace fresh" in second.stderr
        assert f"rp watch (pid {watcher.process.pid}" in second.stderr
        assert ws.rp("pipeline").returncode == 75
        landed = ws.job("ingest")  # another process opens the warehouse between cycles
        assert landed.returncode == 0, landed.stderr

        edit_section(ws.landing / "docs" / KETTLE, EDITED_SECTION, KETTLE_EDIT)
        assert searchable(ws, "zebrafinch firmware", "faq-brightwater-variable-temp-kettle") < 120

        # A burst: 10 new documents, each written 100 times, 1,000 file writes in all.
        for version in range(100):
            for n in range(10):
                path = ws.landing / "docs" / "faq" / f"burst-{n:02d}.md"
                path.write_text(burst_doc(n, final=version == 99), encoding="utf-8")
        watcher.wait_for(lambda lines: any(c.get("changes", {}).get("added") for c in lines if c["event"] == "cycle"))
        assert searchable(ws, "wombatburst9 answer", "faq-burst-09") < 60
    finally:
        code = watcher.stop()
    assert code == 0
    cycles = watcher.cycles()
    burst = [c for c in cycles if c["changes"].get("added")]
    assert len(burst) == 1 and burst[0]["changes"]["added"] == 10, cycles
    assert burst[0]["status"] == "published" and burst[0]["files_seen"] >= 10
    assert watcher.lines()[-1] == {
        "event": "stopped",
        "cycles": len(cycles),
        "statuses": count(c["status"] for c in cycles),
        "stopped_by": "SIGTERM",
    }
    kettle = events(ws)[f"docs/{KETTLE}"]
    assert kettle["outcome"] == "published" and kettle["seen_at"] >= kettle["modified_at"] - timedelta(seconds=1)
    after = once(ws)  # the lock went with the watcher, and it left nothing behind
    assert after["status"] == "no-op", after


def burst_doc(n: int, final: bool) -> str:
    word = f"wombatburst{n}"
    return (
        f'---\ndoc_id: faq-burst-{n:02d}\ntitle: "Burst question {n}"\ndoc_type: faq\nowner: customer-support\n'
        f"access_level: public\nupdated_at: 2026-11-01T09:00:00Z\n---\n# Burst {n}\n\n## Question {n}?\n\n"
        f"The {word} answer {'is final' if final else 'is a draft'}.\n"
    )


def count(values) -> dict[str, int]:
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return counted


# --- what decides a build, without running one -------------------------------------------------


def test_a_build_is_skipped_selected_or_whole_by_what_changed(watch_world, tmp_path):
    ws = watch_world.copy(tmp_path / "ws")
    assert build_state.plan_build(ws.settings()).action == "skip"
    # Settings dbt does not read (the watcher's, the eval gates) change nothing; one it reads changes all.
    assert build_state.plan_build(ws.settings("{watch: {debounce_ms: 50}, eval: {gates: []}}")).action == "skip"
    assert build_state.plan_build(ws.settings("{max_transaction_amount: 99}")).action == "full"

    customers = ws.landing / "shop" / "customers.csv"
    customers.write_text(customers.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    ws.ingest(check=True)
    (ws.landing / "docs" / TO_DELETE).unlink()
    ws.ingest(check=True)
    plan = build_state.plan_build(ws.settings())
    assert plan.action == "select" and plan.sources == ("docs_documents", "shop_customers")
    assert plan.dbt_args() == [
        "build",
        "--select",
        "source:docs.documents+",
        "source:shop.customers+",
        "source:ingest.quarantine",
        "--exclude",
        "tag:ops",
    ]
    no_skipping = ws.settings("{watch: {skip_unchanged_builds: false}}")
    assert build_state.plan_build(no_skipping).action == "full"


def test_every_source_selector_names_a_dbt_source():
    sources = {}
    for path in (PROJECT_DIR / "models" / "staging").glob("*/_*__sources.yml"):
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["sources"]:
            for table in source.get("tables", []):
                sources[table.get("identifier", table["name"])] = f"{source['name']}.{table['name']}"
    for table in ("docs_documents", "shop_customers", "shop_products", "shop_transactions"):
        assert build_state.affected_selection([table]) == (f"source:{sources[table]}+", "source:ingest.quarantine")


def test_freshness_events_are_declared_as_the_tracker_writes_them():
    declared = yaml.safe_load((PROJECT_DIR / "models/staging/ops/_ops__sources.yml").read_text(encoding="utf-8"))
    (table,) = [t for t in declared["sources"][0]["tables"] if t["name"] == "freshness_events"]
    assert {c["name"]: c["data_type"] for c in table["columns"]} == EVENTS
    assert FreshnessTracker.__doc__


def test_only_landing_files_and_folders_wake_the_watcher(tmp_path):
    root = tmp_path / "landing"
    assert relevant(root, str(root / "docs/faq/a.md")) == "docs/faq/a.md"
    assert relevant(root, str(root / "shop/transactions")) == "shop/transactions"
    for ignored in ("docs/.a.md.swp", "docs/faq/a.md~", ".git/index", "docs/a.pdf", "docs/a.md.tmp"):
        assert relevant(root, str(root / ignored)) is None, ignored
    assert relevant(root, str(tmp_path / "elsewhere.md")) is None


def test_settings_of_the_watch_mode_are_checked(tmp_path):
    from python_jobs.common.errors import ConfigError
    from python_jobs.common.settings import Settings, workspace_env

    env = workspace_env(tmp_path) | {"RP_VARS": "{watch: {debounce_ms: 2000, max_delay_ms: 1000}}"}
    with pytest.raises(ConfigError, match=r"watch.max_delay_ms \(1000\) must be at least watch.debounce_ms"):
        Settings.load(env=env)


# --- the batch path ------------------------------------------------------------------------------


def test_the_pipeline_builds_only_what_an_edit_affects_and_records_its_freshness(watch_world, tmp_path):
    ws = watch_world.copy(tmp_path / "ws")
    no_gates = "{eval: {modes: [fts], gates: []}}"  # the eval's settings are no input of the build
    # A cycle stopped after its ingest left an edit landed but not searchable; the pipeline finishes it.
    # (A new owner: the chunks' metadata changes, no text, so no process here pays for loading the model.)
    price_match = ws.landing / "docs" / PRICE_MATCH
    price_match.write_text(price_match.read_text().replace("owner: customer-support", "owner: pricing-team"))
    assert run_cycle(CycleContext(ws.settings(), io.StringIO(), stop_requested=lambda: True)).status == "abandoned"

    ran = ws.job("pipeline", "--json", RP_VARS=no_gates)

    summary = json.loads(ran.stdout)
    assert ran.returncode == 0, ran.stderr
    build = next(step for step in summary["steps"] if step["step"] == "build")
    # The landed edit is the input that changed: its chain is built, not the whole project.
    assert build["status"] == "ok" and build["detail"].startswith("build source:docs.documents+"), build
    edited = events(ws)[f"docs/{PRICE_MATCH}"]
    assert (edited["runner"], edited["outcome"], edited["doc_id"]) == ("pipeline", "published", "faq-price-match")
    assert edited["index_version"] == VectorIndex(ws.index).live().version
    assert ws.query("select owner from knowledge.document_chunks where doc_id = 'faq-price-match' limit 1") == [
        ("pricing-team",)
    ]
    (hours,) = ws.query("select count(*) from observability.ops_freshness where runner = 'pipeline'")[0]
    (waiting,) = ws.query("select changes_not_searchable from observability.ops_freshness_backlog")[0]
    assert hours == 1 and waiting == 0
    html = Path(summary["report_path"]).read_text(encoding="utf-8")
    assert 'id="edit-to-searchable"' in html and "pipeline" in html[html.index('id="edit-to-searchable"') :]


def test_a_change_not_searchable_after_the_sla_is_alerted_once(tmp_path):
    from python_jobs.common.settings import Settings, workspace_env
    from python_jobs.watch.watcher import _check_sla

    settings = Settings.load(env=workspace_env(tmp_path) | {"RP_VARS": "{ops: {freshness_sla_seconds: 60}}"})
    now = datetime.now(UTC)
    ctx = CycleContext(settings, io.StringIO())
    ctx.open_changes = [
        {"event_id": "a", "path": "docs/faq/a.md", "outcome": "blocked", "detail": "no_pii", "changed_at": now},
        {"event_id": "b", "path": "docs/faq/b.md", "outcome": "blocked", "detail": "no_pii", "changed_at": now},
    ]
    alerted: set[str] = set()
    _check_sla(ctx, alerted, io.StringIO())
    assert not (tmp_path / "alerts.jsonl").exists()  # both younger than the SLA

    ctx.open_changes[1]["changed_at"] = now - timedelta(seconds=90)
    _check_sla(ctx, alerted, io.StringIO())
    _check_sla(ctx, alerted, io.StringIO())  # once per change
    (alert,) = read_alerts(tmp_path / "alerts.jsonl")
    assert alert["kind"] == "freshness_sla" and alert["level"] == "error" and alert["subject"] == "docs/faq/b.md"
    assert alert["owner"] == "Knowledge and Retrieval Team" and alert["runbook"] == "docs/runbook.md#freshness-sla"
    assert "1 change(s) not searchable after the SLA of 60 s" in alert["summary"] and alert["error"] == "no_pii"
