"""Hot index swaps: a version published while requests run is served within seconds, no request fails,
and the loaded model is reused."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import threading
import time
from collections import Counter

import numpy as np
import pytest
import requests

from python_jobs.common.errors import PipelineError
from python_jobs.index.encoders import ModelFingerprint
from python_jobs.index.store import VectorIndex
from python_jobs.serve.swap import SharedEmbedder
from tests.serve.conftest import running, serve_settings
from tests.worlds import Workspace

QUESTION = "how do I descale the kettle"


def publish_without(index_dir, chunk_id: str) -> int:
    """A new version of the live table without one chunk, published as an embedding run publishes."""
    index = VectorIndex(index_dir)
    pointer = index.live()
    table = index.open(pointer.table)  # its latest version, where a run writes
    table.delete(f"chunk_id = '{chunk_id}'")
    fields = {f.name for f in dataclasses.fields(ModelFingerprint)}
    model = ModelFingerprint(**{name: value for name, value in pointer.model.items() if name in fields})
    return index.publish(table, model, run_id="test-swap").version


def test_a_version_published_while_requests_run_is_served_within_seconds_and_none_fails(
    search_world: Workspace, tmp_path
):
    index_dir = tmp_path / "index"
    shutil.copytree(search_world.index, index_dir)  # the shared world stays as it was
    with running(serve_settings(index_dir, tmp_path / "root")) as server:
        key = server.add_key("app", "public")
        before = server.get("/readyz").json()["index"]["version"]
        top = server.post("/v1/search", {"query": QUESTION, "k": 3}, key="app").json()["results"][0]["chunk_id"]

        statuses: Counter[int] = Counter()
        versions: list[int] = []
        stop = threading.Event()

        def ask(mode: str) -> None:
            session = requests.Session()
            while not stop.is_set():
                response = session.post(
                    server.url + "/v1/search",
                    json={"query": QUESTION, "mode": mode, "k": 5},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                )
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions.append(response.json()["index"]["version"])

        askers = [threading.Thread(target=ask, args=(mode,)) for mode in ("vector", "fts", "hybrid")]
        for asker in askers:
            asker.start()
        try:
            time.sleep(0.5)
            published = publish_without(index_dir, top)
            published_at = time.monotonic()
            while server.get("/readyz").json()["index"]["version"] != published:
                assert time.monotonic() - published_at < 5, "the new version must be served within seconds"
                time.sleep(0.05)
            swap_seconds = time.monotonic() - published_at
            time.sleep(0.5)
        finally:
            stop.set()
            for asker in askers:
                asker.join(30)

        assert published > before and swap_seconds < 5
        assert set(statuses) == {200}, statuses
        assert versions[0] == before and versions[-1] == published and set(versions) == {before, published}
        after = server.post("/v1/search", {"query": QUESTION, "k": 10}, key="app").json()
        assert after["index"]["version"] == published
        assert top not in {r["chunk_id"] for r in after["results"]}, "the new version is the one answering"
        assert server.metric("rp_serve_index_swaps_total") == 1
        assert server.metric("rp_serve_embedder_loads_total") == 1, "same model: the loaded one is reused"


class SlowHashEmbedder:
    """Deterministic vectors from each text's hash, 50 ms per call: time for callers to queue up."""

    fingerprint = ModelFingerprint("hash", "0", 8, True, 16, "test")

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.fail = fail

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        time.sleep(0.05)
        if self.fail:
            raise RuntimeError("the model broke")
        return np.array([[b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts], np.float32)


def test_concurrent_questions_share_one_forward_pass_and_each_gets_its_own_vector():
    inner = SlowHashEmbedder()
    shared = SharedEmbedder(inner)
    questions = [f"question {i}" for i in range(12)]
    got: dict[str, np.ndarray] = {}

    def ask(question: str) -> None:
        got[question] = shared.encode([question])[0]

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(inner.calls) == 12 and len(inner.calls) < 12, inner.calls
    for question in questions:
        assert np.array_equal(got[question], SlowHashEmbedder().encode([question])[0])

    broken = SharedEmbedder(SlowHashEmbedder(fail=True))
    with pytest.raises(PipelineError, match="the model broke"):
        broken.encode(["anything"])
