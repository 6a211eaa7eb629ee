"""Promises about the index itself.

- 8: `make verify` reads the whole published table and finds what is broken in it (unreadable data
  files, non-finite or non-unit vectors, a live.json naming a version that is gone, a tag, or an
  old version), and `--repair` rebuilds it from the vector cache into a new version and publishes it,
  whatever the no-change shortcut would have said.
- 11: full-text scores are computed over what the caller may read: a public caller's BM25 scores do
  not move when a confidential document containing the query's terms is added.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from python_jobs.index.store import CACHE_PREFIX, FTS_COLUMNS, INDEX_PREFIX, LIVE_FILE, VectorIndex
from python_jobs.search.filters import ACCESS_LEVELS, access_levels_up_to
from python_jobs.search.retriever import Retriever
from tests.conftest import shared_world
from tests.index.test_embed import assert_same_index, live_rows
from tests.worlds import Workspace, rebuild

# A confidential repair note whose text is hostile to a terminal renderer (item 10 reads it too) and
# which shares its words with the public kettle FAQ (item 11 queries them).
HOSTILE_DOC_ID = "conf-kettle-hinge-reset-note"
HOSTILE_QUERY = "kettle lid hinge reset"
HOSTILE_DOC = f"""---
doc_id: {HOSTILE_DOC_ID}
title: "Kettle lid hinge reset: repair desk note"
doc_type: troubleshooting
product_sku: KIT-KTL-110
owner: repair-desk
access_level: confidential
updated_at: 2026-10-02T09:00:00Z
---

## Resetting the kettle after a lid hinge repair

Press [/] then [red]reset[/red] on the kettle base :x: and hold the kettle lid until the kettle beeps.
Kettle kettle kettle: the hinge of every kettle lid is replaced under the goodwill program.
"""


@pytest.fixture(scope="session")
def hostile_search_world(search_world: Workspace, shared_dir: Path) -> Workspace:
    """The search world plus the confidential hostile note, built, and indexed from scratch (vectors from the
    cache): the note is in the full-text index's statistics, not only among rows added since it was built."""

    def build(ws: Workspace) -> None:
        from python_jobs.index.embed import embed

        search_world.copy(ws.root)
        note = ws.landing / "docs" / "troubleshooting" / f"{HOSTILE_DOC_ID}.md"
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(HOSTILE_DOC, encoding="utf-8")
        rebuild(ws)
        for table in ws.index.glob(f"{INDEX_PREFIX}*.lance"):
            shutil.rmtree(table)
        (ws.index / LIVE_FILE).unlink()
        embed(ws.settings())

    return shared_world(shared_dir, "hostile-search", build)


# --- 8: verify and repair -------------------------------------------------------------------------


def verify(ws: Workspace) -> tuple[int, dict]:
    ran = ws.rp("verify", "--json")
    assert "Traceback" not in ran.stderr
    return ran.returncode, json.loads(ran.stdout) if ran.stdout.strip() else {}


def repair(ws: Workspace) -> dict:
    """`make verify ARGS=--repair`: it must leave a healthy index, whose version is new."""
    before = VectorIndex(ws.index).live_file.read_text(encoding="utf-8")
    ran = ws.rp("verify", "--repair", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["healthy"]
    assert VectorIndex(ws.index).live_file.read_text(encoding="utf-8") != before, "nothing was republished"
    return json.loads(ran.stdout)


def overwrite_on_disk(table_dir: Path, value: list[float] | str, replacement) -> None:
    """Overwrite a stored vector's (or text's) bytes in place, as a bad disk or a stray write would."""

    def stored(item) -> bytes:
        return item.encode("utf-8") if isinstance(item, str) else np.asarray(item, dtype=np.float32).tobytes()

    hits = 0
    for data_file in (table_dir / "data").glob("*.lance"):
        data = data_file.read_bytes()
        if stored(value) in data:
            data_file.write_bytes(data.replace(stored(value), stored(replacement)))
            hits += 1
    assert hits, "the value was not found in the table's data files"


def problems(report: dict) -> dict[str, int]:
    return {name: count for name, count in report["problems"].items() if count}


def set_live_version(ws: Workspace, version) -> None:
    pointer = json.loads((ws.index / "live.json").read_text(encoding="utf-8"))
    pointer["version"] = version
    (ws.index / "live.json").write_text(json.dumps(pointer), encoding="utf-8")


def test_verify_reads_the_whole_index_and_repair_rebuilds_what_is_broken(indexed_world: Workspace, tmp_path: Path):
    ws = indexed_world.copy(tmp_path / "ws")
    original = live_rows(ws)
    index = VectorIndex(ws.index)
    pointer = index.live()
    dimension = len(next(iter(original.values()))["vector"])

    # Overwritten inside the data files: a vector with NaNs, one twice as long as it should be, and a
    # sentence of a third chunk's text (in every column that holds it: the chunk's hashes stay as they were).
    nan_chunk, long_chunk, text_chunk = sorted(original)[:3]
    table_dir = ws.index / f"{pointer.table}.lance"
    overwrite_on_disk(table_dir, original[nan_chunk]["vector"], np.full(dimension, np.nan))
    overwrite_on_disk(table_dir, original[long_chunk]["vector"], 2 * np.array(original[long_chunk]["vector"]))
    sentence = original[text_chunk]["text"][10:40]
    overwrite_on_disk(table_dir, sentence, "#" * len(sentence))
    code, report = verify(ws)
    assert code == 1
    assert problems(report) == {"non_finite_vectors": 1, "non_unit_vectors": 1, "corrupt_text": 1}
    assert report["examples"]["non_finite_vectors"] == [nan_chunk]
    assert report["examples"]["non_unit_vectors"] == [long_chunk]
    assert report["examples"]["corrupt_text"] == [text_chunk]
    repair(ws)
    assert_same_index(live_rows(ws), original)

    # Every data file of the table cut in half, and one text missing from the vector cache: verify names
    # the damage instead of crashing, and repair rebuilds from the cache, embedding only that one text.
    lost_hash = original[long_chunk]["content_hash"]
    index.open(f"{CACHE_PREFIX}{pointer.model['id']}").delete(f"content_hash = '{lost_hash}'")
    for data_file in (table_dir / "data").glob("*.lance"):
        with data_file.open("r+b") as handle:
            handle.truncate(data_file.stat().st_size // 2)
    code, report = verify(ws)
    assert code == 1 and problems(report).get("unreadable_live_index") == 1, report
    assert any("truncated" in note for note in report["notes"]), report["notes"]
    broken = ws.rp("query", "descale the kettle", "--mode", "fts")
    assert broken.returncode == 1 and "make verify ARGS=--repair" in broken.stderr, broken.stderr
    repaired = ws.rp("verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "rebuilt" in repaired.stdout and "1 text embedded" in repaired.stdout, repaired.stdout
    assert_same_index(live_rows(ws), original)
    found = ws.rp("query", "descale the kettle", "--mode", "fts", "--json")
    assert found.returncode == 0 and json.loads(found.stdout)["hits"], found.stderr

    # live.json naming a version that does not exist, a tag instead of a version, and an old version:
    # with the chunks unchanged the no-change shortcut would call each of these "unchanged".
    for version in (999, "live", 1):
        set_live_version(ws, version)
        code, report = verify(ws)
        assert code == 1, (version, report)
        repair(ws)
        assert_same_index(live_rows(ws), original)
        assert isinstance(VectorIndex(ws.index).live().version, int)


# --- 11: full-text statistics per clearance -------------------------------------------------------


def fts_scores(retriever: Retriever, query: str, levels: tuple[str, ...]) -> dict[str, float]:
    return {h.chunk_id: h.score for h in retriever.search(query, "fts", k=100, access_levels=levels).hits}


def test_public_full_text_scores_do_not_move_when_a_confidential_document_is_added(
    search_world: Workspace, hostile_search_world: Workspace
):
    assert tuple(FTS_COLUMNS) == ACCESS_LEVELS  # a full-text column for each clearance, lowest first
    before, after = Retriever(search_world.settings()), Retriever(hostile_search_world.settings())
    for query in (HOSTILE_QUERY, "kettle"):
        for clearance in ("public", "internal"):
            levels = access_levels_up_to(clearance)
            scores = fts_scores(before, query, levels)
            assert scores, (query, clearance)
            assert fts_scores(after, query, levels) == pytest.approx(scores, rel=1e-6), (query, clearance)
    # The note is in the index, and a caller cleared for it sees its words counted.
    cleared_before, cleared_after = (fts_scores(r, "kettle", ACCESS_LEVELS) for r in (before, after))
    assert HOSTILE_DOC_ID in {chunk.split(":")[0] for chunk in cleared_after}
    shared = cleared_before.keys() & cleared_after.keys()
    assert shared and all(cleared_after[c] != pytest.approx(cleared_before[c], rel=1e-6) for c in shared)
