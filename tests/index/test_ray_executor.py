"""Embedding on Ray (`vars.embedding.executor: ray`): a real local Ray, the real model, the real CLI.

Ray costs seconds to start and each actor loads the model, so the module shares two runs on one copy of
the indexed world, emptied: the first is killed with kill -9 after its second commit, the second (with an
actor killed mid-batch) finishes the job. Together they must equal the index the local executor built.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from python_jobs.index.store import VectorIndex
from tests.index.test_embed import live_rows
from tests.worlds import Workspace

# Small commits, so that a run makes several; two actors, so that batches finish out of order and come back in it.
RAY = "{embedding: {executor: ray, commit_rows: 4, ray: {actors: 2}}}"
ONE_ACTOR = "{embedding: {executor: ray, commit_rows: 4, ray: {actors: 1}}}"


def emptied(world: Workspace, destination: Path) -> Workspace:
    """A copy of `world` whose index is gone: every chunk is to embed again."""
    ws = world.copy(destination)
    shutil.rmtree(ws.index)
    shutil.rmtree(ws.root / "index_scratch", ignore_errors=True)
    return ws


def ray_processes_of(ws: Workspace) -> list[str]:
    """The Ray head processes (GCS server, raylet) started from this workspace's jobs (they inherit its env)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if ("gcs_server" in command or "raylet" in command) and str(ws.root).encode() in environ:
            found.append(f"{proc.name}: {command[:80]}")
    return found


@dataclass
class RayRuns:
    ws: Workspace
    killed_returncode: int
    left_running: list[str]
    committed_by_killed_run: int
    rerun: dict
    actor_marker: Path
    ledger: list[tuple]


@pytest.fixture(scope="module")
def ray_runs(indexed_world: Workspace, tmp_path_factory: pytest.TempPathFactory) -> RayRuns:
    ws = emptied(indexed_world, tmp_path_factory.mktemp("ray") / "ws")
    killed = ws.job("embed", RP_FAILPOINT="after_index_commit:2", RP_VARS=ONE_ACTOR)
    deadline = time.monotonic() + 15
    while (left := ray_processes_of(ws)) and time.monotonic() < deadline:
        time.sleep(0.5)
    index = VectorIndex(ws.index)
    committed = index.open(next(n for n in index.table_names() if n.startswith("vectors_"))).count_rows()

    marker = ws.root / "actor-killed"
    rerun = ws.job("embed", "--json", RP_VARS=RAY, RP_FAILPOINT="ray_actor_batch", RP_FAILPOINT_ONCE=str(marker))
    assert rerun.returncode == 0, rerun.stderr
    ledger = ws.query("select status, texts_embedded from ops.embed_runs order by started_at")
    return RayRuns(ws, killed.returncode, left, committed, json.loads(rerun.stdout), marker, ledger)


def test_index_built_on_ray_equals_the_local_one(ray_runs, indexed_world):
    ray_rows, local_rows = live_rows(ray_runs.ws), live_rows(indexed_world)
    assert ray_rows.keys() == local_rows.keys() and len(ray_rows) > 10
    for chunk_id, row in ray_rows.items():
        assert row["content_hash"] == local_rows[chunk_id]["content_hash"]
        cosine = float(np.dot(row["vector"], local_rows[chunk_id]["vector"]))
        assert cosine >= 0.9999, (chunk_id, cosine)
    verify = ray_runs.ws.rp("verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["healthy"] is True, verify.stdout


def test_killed_driver_takes_its_local_ray_with_it_and_publishes_nothing(ray_runs):
    assert ray_runs.killed_returncode == -signal.SIGKILL
    assert ray_runs.left_running == []
    assert ray_runs.committed_by_killed_run == 8  # two commits of 4 texts each
    status, recorded = ray_runs.ledger[1]
    assert status == "interrupted" and 4 <= recorded <= 8  # recorded at the first commit, then every few seconds


def test_rerun_after_kill_embeds_only_what_the_killed_run_did_not_commit(ray_runs, indexed_world):
    distinct = indexed_world.query("select count(distinct content_hash) from knowledge.document_chunks")[0][0]
    assert ray_runs.rerun["texts_embedded"] == distinct - ray_runs.committed_by_killed_run
    assert [status for status, _ in ray_runs.ledger] == ["success", "interrupted", "success"]
    cache = VectorIndex(ray_runs.ws.index).open(f"vectors_{ray_runs.rerun['model']['id']}")
    assert cache.count_rows() == distinct  # no text cached twice


def test_actor_killed_mid_batch_is_retried_and_the_run_completes(ray_runs):
    assert ray_runs.actor_marker.is_file()  # an actor reached the failpoint and was killed there
    assert ray_runs.rerun["published"] is True and ray_runs.rerun["model_loaded"] is True


# --- configuration errors: one line naming the setting, exit code 2, no traceback, no hang -----------


@pytest.fixture
def pending(indexed_world: Workspace, tmp_path: Path) -> Workspace:
    return emptied(indexed_world, tmp_path / "ws")


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_ray_not_installed_is_one_error_line_naming_the_setting(pending, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when the package is not installed
    line = one_error_line(pending.rp("embed", RP_VARS=RAY))
    assert "vars.embedding.executor is ray but Ray cannot be imported" in line
    assert "pip install -c constraints.txt 'ray[data]==2.60.0'" in line


def test_unreachable_ray_address_is_one_error_line_and_changes_nothing(pending):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    line = one_error_line(pending.rp("embed", RP_VARS=RAY, RP_RAY_ADDRESS=f"127.0.0.1:{port}"))
    assert line.startswith(f"error: RP_RAY_ADDRESS='127.0.0.1:{port}': nothing answers at 127.0.0.1:{port}")
    assert time.monotonic() - started < 30
    assert VectorIndex(pending.index).live() is None


def test_gpus_the_cluster_lacks_are_one_error_line_naming_num_gpus(pending):
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU")
    result = pending.job("embed", RP_VARS="{embedding: {executor: ray, ray: {num_gpus: 1}}}")
    line = one_error_line(result)
    assert "vars.embedding.ray.num_gpus is 1 but the local Ray started for this run" in line
    assert "has 0 GPUs" in line
