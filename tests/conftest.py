"""Shared test worlds, each built once per test run and read by every test that needs it.

`make test` runs on both cores with pytest-xdist. A world (a dbt build, an index embedded with the
real model) is built by the first worker that asks for it, under a file lock in the run's shared temp
directory; the other worker waits for it and reads the same files. Worlds are read-only: a test that
changes one works on a copy (`world`, `Workspace.copy`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from tests.s3server import S3Server
from tests.worlds import (
    EDITED_SECTION,
    INTERNAL_DOC,
    KETTLE,
    SECRET_DOC,
    SECRET_DOC_ID,
    TO_ADD,
    TO_DELETE,
    Workspace,
    add_sample_doc,
    edit_section,
    rebuild,
    write_small_landing,
)

BUILT_MARKER = ".built"


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp directory every worker of this run sees (each worker's own basetemp is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_world(shared_dir: Path, name: str, build: Callable[[Workspace], None]) -> Workspace:
    """The world `name`, built by `build` once for the whole run, whichever worker asks first."""
    folder = shared_dir / "worlds" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f"{name}.lock")):
        if not (folder / BUILT_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed half way in another worker
            build(Workspace(folder / "ws"))
            (folder / BUILT_MARKER).touch()
    return Workspace(folder / "ws")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A local S3-compatible server (moto) on 127.0.0.1 with one empty bucket, one per worker and run.
    Tests keep apart by prefix (`s3_server.uri(<unique prefix>)`)."""
    with S3Server() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """An empty workspace with a small landing zone written, nothing ingested yet."""
    ws = Workspace(tmp_path / "ws")
    write_small_landing(ws.landing)
    return ws


@pytest.fixture(scope="session")
def built_world(shared_dir: Path) -> Workspace:
    """A small world ingested and built once with dbt; tests clone it before changing it."""

    def build(ws: Workspace) -> None:
        write_small_landing(ws.landing)
        ws.ingest(check=True)
        ws.dbt("build", check=True)

    return shared_world(shared_dir, "built", build)


@pytest.fixture
def world(built_world: Workspace, tmp_path: Path) -> Workspace:
    """A private copy of the built world."""
    return built_world.copy(tmp_path / "world")


# --- embedding worlds -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def indexed_world(built_world: Workspace, shared_dir: Path) -> Workspace:
    """The built world plus one more document, embedded with the real model into a real LanceDB index."""

    def build(ws: Workspace) -> None:
        from python_jobs.index.embed import embed

        built_world.copy(ws.root)
        add_sample_doc(ws, TO_DELETE)
        rebuild(ws)
        embed(ws.settings())

    return shared_world(shared_dir, "indexed", build)


@pytest.fixture(scope="session")
def pending_world(indexed_world: Workspace, shared_dir: Path) -> Workspace:
    """The indexed world after a round of changes that dbt has built but nothing has embedded yet:
    one section of the kettle FAQ edited, the price-match FAQ's owner changed (metadata only), the
    store-pickup FAQ deleted, a copy of the original kettle FAQ under a new id, and a new FAQ."""

    def build(ws: Workspace) -> None:
        indexed_world.copy(ws.root)
        original_kettle = (ws.landing / "docs" / KETTLE).read_text(encoding="utf-8")
        copy = ws.landing / "docs" / "faq" / "faq-kettle-copy.md"
        copy.write_text(
            original_kettle.replace("doc_id: faq-brightwater-variable-temp-kettle", "doc_id: faq-kettle-copy")
        )
        edit_section(
            ws.landing / "docs" / KETTLE,
            EDITED_SECTION,
            "Yes. Since the November firmware update the kettle pairs with the Brightwater app over Bluetooth, "
            "so you can start it from bed and get a notification when the water is ready.",
        )
        price_match = ws.landing / "docs" / "faq" / "faq-price-match.md"
        price_match.write_text(
            price_match.read_text(encoding="utf-8").replace("owner: customer-support", "owner: pricing-team")
        )
        (ws.landing / "docs" / TO_DELETE).unlink()
        add_sample_doc(ws, TO_ADD)
        rebuild(ws)

    return shared_world(shared_dir, "pending", build)


# --- the ops world: one green pipeline run ----------------------------------------------------

# fts only: the pipeline's eval needs no model load; the small world answers few seeded
# questions, so the release gates are replaced by one the tests choose.
NO_GATES = "{eval: {modes: [fts], gates: []}}"


def pipeline(ws: Workspace, vars: str = NO_GATES, **env: str) -> tuple[int, dict, str]:
    """`rp pipeline --json` in ws: exit code, summary, stderr."""
    ran = ws.job("pipeline", "--json", RP_VARS=vars, **env)
    return ran.returncode, json.loads(ran.stdout), ran.stderr


@pytest.fixture(scope="session")
def ops_world(indexed_world: Workspace, shared_dir: Path) -> Workspace:
    """The indexed world after one green `make pipeline` (its build state recorded, so the next
    pipeline run in a copy builds only what changed); copy it before breaking anything."""

    def build(ws: Workspace) -> None:
        indexed_world.copy(ws.root)
        code, summary, stderr = pipeline(ws)
        assert code == 0, stderr
        (ws.root / "pipeline-summary.json").write_text(json.dumps(summary), encoding="utf-8")

    ws = shared_world(shared_dir, "ops", build)
    ws.summary = json.loads((ws.root / "pipeline-summary.json").read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    return ws


# --- a search world: public, internal and confidential documents, indexed -------------------


@pytest.fixture(scope="session")
def search_world(built_world: Workspace, shared_dir: Path) -> Workspace:
    """The built world plus an internal FAQ and a confidential note that matches SECRET_QUERY best, indexed."""

    def build(ws: Workspace) -> None:
        from python_jobs.index.embed import embed

        built_world.copy(ws.root)
        add_sample_doc(ws, INTERNAL_DOC)
        secret = ws.landing / "docs" / "troubleshooting" / f"{SECRET_DOC_ID}.md"
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(SECRET_DOC, encoding="utf-8")
        rebuild(ws)
        embed(ws.settings())

    return shared_world(shared_dir, "search", build)


# Modules by how long they take (seconds of setup + calls, from `--durations=0` on this 2-core machine),
# longest first, so that with `--dist loadscope --no-loadscope-reorder` (make test) the long ones start
# first and the short ones fill in at the end. Worker 1 starts with the pipeline module, which builds the
# built, indexed and ops worlds; worker 2 starts with modules that need no world while it does, so
# neither waits on the other's lock. A module left out runs after all of these: keep every module over
# ~15 s listed.
MODULE_ORDER = (
    "observe/test_observability.py",  # ~310 s: builds the built, indexed and ops worlds
    "bench/test_generate_data.py",  # ~45 s, no world
    "chunk/test_chunker.py",  # ~20 s, no world
    "evaluate/test_metrics.py",  # ~10 s, no world: ranx compiles its metrics once
    "index/test_embed.py",  # ~245 s, the indexed and pending worlds
    "watch/test_watch.py",  # ~160 s, the indexed world: a watcher process, dbt in process, one pipeline run
    "integrity/test_gate_and_guards.py",  # ~120 s
    "land/test_bad_input.py",  # ~100 s
    "evaluate/test_eval.py",  # ~95 s, builds the search world
    "chunk/test_retrieval_dataset.py",  # ~95 s
    "orchestrate/test_orchestration.py",  # ~90 s: one Dagster run of the graph, dagster dev
    "index/test_ray_executor.py",  # ~80 s: a local Ray cluster
    "integrity/test_alerts_and_terminal.py",  # ~70 s
    "transform/test_warehouse_build.py",  # ~70 s
    "index/test_edit_costs.py",  # ~35 s
    "index/test_object_storage.py",  # ~25 s: a moto server, one S3 embed, a kill -9
    "observe/test_serving_loop.py",  # ~20 s
    "index/test_onnx_encoder.py",  # ~20 s
    "index/test_verify.py",  # ~20 s
    "search/test_retriever.py",  # ~15 s
    "transform/test_warehouse_targets.py",  # ~15 s: one dbt run on the s3 target
    "integrity/test_pii_and_chunks.py",  # ~15 s
    "serve/test_serve_cli.py",  # ~15 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        module = item.path.relative_to(tests_dir).as_posix()
        return MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)  # stable: within a module, the order it is written in
