"""`make verify` finds what is wrong with the published index and --repair fixes it; index upkeep."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from python_jobs.index.encoders import ModelFingerprint
from python_jobs.index.store import VectorIndex, index_schema, pin
from python_jobs.index.upkeep import build_ann_index, compact_and_clean_up, needs_ann_index, upkeep
from tests.index.test_embed import assert_same_index, live_rows


def republish_latest(ws) -> None:
    """Make whatever the latest version of the live table holds the published one."""
    index = VectorIndex(ws.index)
    pointer = index.live()
    model = ModelFingerprint(**{k: v for k, v in pointer.model.items() if k != "id"})
    index.publish(index.open(pointer.table), model, "test")


def test_healthy_index_verifies_clean(indexed_world, tmp_path):
    ws = indexed_world.copy(tmp_path / "ws")
    result = ws.job("verify", "--json", check=True)
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    assert report["index_rows"] == report["chunks"] > 0


def test_verify_reports_missing_orphaned_stale_and_duplicated_rows_and_repair_fixes_them(indexed_world, tmp_path):
    ws = indexed_world.copy(tmp_path / "ws")
    original = live_rows(ws)
    table = VectorIndex(ws.index).open(VectorIndex(ws.index).live().table)
    missing, stale, duplicated = sorted(original)[:3]
    table.delete(f"chunk_id = '{missing}'")
    table.update(where=f"chunk_id = '{stale}'", values={"content_hash": "not-the-real-hash"})
    orphan = dict(original[duplicated], chunk_id="ghost-doc:0000000000:000", doc_id="ghost-doc")
    table.add(pa.Table.from_pylist([original[duplicated], orphan], schema=table.schema))
    republish_latest(ws)

    result = ws.job("verify", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert {k: v for k, v in report["problems"].items() if v} == {
        "missing": 1,
        "orphaned": 1,
        "stale": 1,
        "duplicated": 1,
    }
    assert report["examples"]["missing"] == [missing]
    assert report["examples"]["orphaned"] == ["ghost-doc:0000000000:000"]

    repaired = ws.job("verify", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert_same_index(live_rows(ws), original)


def test_unreadable_live_pointer_is_named_and_repair_republishes(indexed_world, tmp_path):
    ws = indexed_world.copy(tmp_path / "ws")
    original = live_rows(ws)
    (ws.index / "live.json").write_text("{ not json")

    broken = ws.job("verify")
    assert broken.returncode == 1
    assert "live.json is unreadable" in broken.stderr and "--repair" in broken.stderr
    assert "Traceback" not in broken.stderr

    ws.job("verify", "--repair", check=True)
    assert_same_index(live_rows(ws), original)
    assert list(ws.index.glob("live.json.unreadable-*"))


# --- upkeep on a real LanceDB table, no model needed -----------------------------------------


def synthetic_rows(schema: pa.Schema, n: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(start)
    dimension = schema.field("vector").type.list_size
    vectors = rng.normal(size=(n, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = {name: [None] * n for name in schema.names}
    rows |= {
        "chunk_id": [f"doc-{i}:s:000" for i in range(start, start + n)],
        "doc_id": [f"doc-{i}" for i in range(start, start + n)],
        "embedding_text": [f"passage number {i} about kettles" for i in range(start, start + n)],
        "access_level": ["public"] * n,
        "doc_type": ["faq"] * n,
        "indexed_at": [datetime.now(UTC)] * n,
        "vector": list(vectors),
    }
    return pa.table(rows, schema=schema)


@pytest.fixture
def table(tmp_path):
    index = VectorIndex(tmp_path / "index")
    table = index.open_or_create("chunks_test", index_schema(8))
    table.add(synthetic_rows(table.schema, 300))
    return table


def test_ann_index_is_built_only_once_the_table_reaches_the_threshold(table):
    assert upkeep(table, keep_days=7).ann_index == "none"
    indexes = {tuple(i.columns): i.index_type for i in table.list_indices()}
    assert indexes[("embedding_text",)] == "FTS" and ("vector",) not in indexes
    assert not needs_ann_index(table, ann_min_rows=1000)

    assert needs_ann_index(table, ann_min_rows=300)
    build_ann_index(table)
    query = table.search().where("chunk_id = 'doc-5:s:000'").limit(1).to_arrow()["vector"][0].as_py()
    assert table.search(query).limit(1).to_arrow()["chunk_id"][0].as_py() == "doc-5:s:000"
    assert not needs_ann_index(table, ann_min_rows=300)
    assert upkeep(table, keep_days=7).ann_index == "present"


def test_cleanup_removes_old_versions_but_never_a_pinned_one(table):
    for start in (300, 310):
        table.add(synthetic_rows(table.schema, 10, start=start))
    time.sleep(1.5)  # the cutoff keeps a second of slack before the oldest pinned version
    table.add(synthetic_rows(table.schema, 10, start=320))
    pinned = table.version
    pin(table, "eval", pinned)
    table.add(synthetic_rows(table.schema, 10, start=330))

    removed = compact_and_clean_up(table, keep_days=0)
    versions = [v["version"] for v in table.list_versions()]
    assert removed >= 3  # the versions before the pin are gone
    assert min(versions) == pinned
    table.checkout(pinned)
    assert table.count_rows() == 330
