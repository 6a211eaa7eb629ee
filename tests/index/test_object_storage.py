"""The index on S3-compatible object storage: a real moto server on 127.0.0.1, the real model, the `rp` CLI.

Everything a local index does, on an s3:// prefix: embed (equal to the local index), verify and repair,
query, eval and the service (which follows the live pointer by polling it), an incremental run killed
with kill -9 while a second run is refused, the run lease taken over when its holder is gone, upkeep,
and one clear error line when the store cannot be reached.

One index is embedded to S3 per module (`base`); a test that changes an index works on a server-side
copy of that prefix (`copy_prefix`), as tests of local indexes work on a copy of the directory.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from python_jobs.common.settings import ENV_INDEX_DIR, ENV_INDEX_SCRATCH_DIR, ENV_VARS, Settings
from python_jobs.index.embed import embed
from python_jobs.index.encoders import ModelFingerprint
from python_jobs.index.objectstore import LeaseLostError, PointerConflictError, S3Objects
from python_jobs.index.store import LEASE_OBJECT, LIVE_FILE, VectorIndex
from tests.index.test_embed import assert_same_index
from tests.s3server import S3Server, free_port
from tests.worlds import SMALL_COMMITS, Workspace

KETTLE_ID = "faq-brightwater-variable-temp-kettle"
NO_GATES = "{eval: {gates: []}}"


@pytest.fixture(scope="module", autouse=True)
def aws_environment(s3_server: S3Server):
    """This process talks to the local server too (the tests read the index directly, the service runs in a
    thread): the same AWS_* variables a user would export."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        yield


def location_env(ws: Workspace, uri: str, **extra: str) -> dict[str, str]:
    return {ENV_INDEX_DIR: uri, ENV_INDEX_SCRATCH_DIR: str(ws.root / "index_scratch"), **extra}


def settings_for(ws: Workspace, uri: str, vars: str | None = None) -> Settings:
    return Settings.load(env={**ws.paths, **location_env(ws, uri), **({ENV_VARS: vars} if vars else {})})


def live_rows(index: VectorIndex) -> dict[str, dict]:
    rows = index.open_live().to_arrow().to_pylist()
    assert len(rows) == len({r["chunk_id"] for r in rows}), "duplicate chunk ids in the live index"
    return {r["chunk_id"]: r for r in rows}


def fingerprint_of(pointer) -> ModelFingerprint:
    names = {f.name for f in dataclasses.fields(ModelFingerprint)}
    return ModelFingerprint(**{name: value for name, value in pointer.model.items() if name in names})


def keys_of(index: VectorIndex) -> list[str]:
    return index.open_live().to_arrow().column("chunk_id").to_pylist()


def copy_prefix(s3: S3Server, source: str, name: str | None = None) -> str:
    """A server-side copy of every object under the index `source` (an s3:// URI); the copy's URI."""
    client, bucket = s3.client(), s3.bucket
    source_prefix = source.removeprefix(f"s3://{bucket}/")
    target_prefix = name or f"copy-{uuid.uuid4().hex[:8]}"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=source_prefix + "/"):
        for item in page.get("Contents", []):
            key = target_prefix + item["Key"][len(source_prefix) :]
            client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": item["Key"]})
    return s3.uri(target_prefix)


def object_names(s3: S3Server, uri: str) -> list[str]:
    """The objects under an index's prefix, relative to it."""
    prefix = uri.removeprefix(f"s3://{s3.bucket}/") + "/"
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return [item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", [])]


def upload_dir(s3: S3Server, directory: Path, uri: str) -> None:
    client, prefix = s3.client(), uri.removeprefix(f"s3://{s3.bucket}/")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=s3.bucket, Key=item["Key"])
    for path in directory.rglob("*"):
        if path.is_file():
            client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{path.relative_to(directory)}", Body=path.read_bytes())


@pytest.fixture(scope="module")
def base(indexed_world: Workspace, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory):
    """The indexed world's chunks embedded from scratch into s3://<bucket>/base by `rp embed`, with the model."""
    ws = indexed_world.copy(tmp_path_factory.mktemp("s3-base") / "ws")
    uri = s3_server.uri(f"base-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    result = ws.rp("embed", "--json", **location_env(ws, uri), check=True)
    summary = json.loads(result.stdout)
    summary["wall_seconds"] = time.perf_counter() - started
    return ws, uri, summary


# --- embed, verify, query, eval, serve -------------------------------------------------------------


def test_embedding_to_s3_gives_the_local_index_and_verifies_clean(base, indexed_world, s3_server):
    ws, uri, summary = base
    assert summary["published"] and summary["texts_embedded"] > 0 and summary["index_dir"] == uri
    index = VectorIndex(settings_for(ws, uri).index_dir)
    assert_same_index(live_rows(index), live_rows(VectorIndex(indexed_world.index)))
    keys = set(object_names(s3_server, uri))
    assert LIVE_FILE in keys and LEASE_OBJECT not in keys  # published; the lease went with the run
    assert not any(key.startswith(("_staging", "_models")) for key in keys)  # scratch stays on local disk

    # The ops marts' snapshot of the published version, read from S3.
    live = index.live()
    assert ws.query("select count(*), max(index_version) from ops.indexed_chunks") == [
        (len(keys_of(index)), live.version)
    ]

    verified = ws.rp("verify", "--json", **location_env(ws, uri))
    report = json.loads(verified.stdout)
    assert verified.returncode == 0, verified.stdout
    assert report["healthy"] and report["rows_read"] == report["chunks"] > 0 and report["index_dir"] == uri


def test_query_eval_and_the_service_read_the_s3_index_and_follow_a_new_publish(base, s3_server, tmp_path):
    from tests.serve.conftest import running, serve_settings

    ws, source, _ = base
    uri = copy_prefix(s3_server, source)
    env = location_env(ws, uri)
    found = json.loads(ws.rp("query", "does the kettle connect to the app", "--json", **env, check=True).stdout)
    published = VectorIndex(settings_for(ws, uri).index_dir).live()
    assert found["index_version"] == published.version and found["hits"][0]["doc_id"] == KETTLE_ID

    questions, judgments = tmp_path / "questions.csv", tmp_path / "judgments.csv"
    questions.write_text(
        "question_id,question,category,asker_access_level,filter_doc_type\n"
        "q1,how do I descale the kettle,how-to,public,\n"
    )
    judgments.write_text(f"question_id,doc_id,relevance\nq1,{KETTLE_ID},2\n")
    evaluated = ws.rp(
        "eval",
        "--no-gates",
        "--questions",
        str(questions),
        "--judgments",
        str(judgments),
        "--json",
        **env,
        RP_VARS=NO_GATES,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    index = VectorIndex(settings_for(ws, uri).index_dir)
    assert index.open(published.table).tags.list()["eval"]["version"] == published.version  # pinned on S3
    assert ws.query("select index_dir from ops.eval_runs order by started_at desc limit 1") == [(uri,)]

    settings = serve_settings(uri, tmp_path / "root", **{ENV_INDEX_SCRATCH_DIR: str(tmp_path / "scratch")})
    with running(settings) as server:
        server.add_key("app", "public")
        answer = server.post("/v1/search", {"query": "kettle app bluetooth", "k": 3}, key="app").json()
        assert answer["index"]["version"] == published.version
        top = answer["results"][0]["chunk_id"]
        # A new version published on S3 (one chunk fewer), as a run publishes: the poller picks it up.
        table = index.open(published.table)
        table.delete(f"chunk_id = '{top}'")
        newer = index.publish(table, fingerprint_of(published), run_id="test-s3-swap").version
        deadline = time.monotonic() + 10
        while server.get("/readyz").json()["index"]["version"] != newer:
            assert time.monotonic() < deadline, "the service did not follow the pointer on S3"
            time.sleep(0.1)
        after = server.post("/v1/search", {"query": "kettle app bluetooth", "k": 3}, key="app").json()
        assert after["index"]["version"] == newer and top not in [r["chunk_id"] for r in after["results"]]


# --- crash safety and concurrency on S3 -----------------------------------------------------------


def test_incremental_run_killed_mid_run_is_invisible_refuses_a_second_run_and_converges(
    base, pending_world, s3_server, tmp_path
):
    _, source, _ = base
    # The local reference: the pending changes embedded into a local copy of the same index.
    reference = pending_world.copy(tmp_path / "reference")
    embed(reference.settings())
    expected = live_rows(VectorIndex(reference.index))

    ws = pending_world.copy(tmp_path / "ws")
    uri = copy_prefix(s3_server, source)
    index = VectorIndex(settings_for(ws, uri).index_dir)
    before = index.live()
    # The vector cache as the reference left it, so the killed run commits rows without loading the model.
    cache = f"vectors_{before.model['id']}.lance"
    upload_dir(s3_server, reference.index / cache, f"{uri}/{cache}")

    command = [sys.executable, "-m", "python_jobs", "embed"]
    env = {
        **ws.env,
        **location_env(ws, uri),
        "RP_VARS": SMALL_COMMITS,
        "RP_FAILPOINT": "after_index_commit:2",
        "RP_FAILPOINT_ACTION": "pause",
    }
    with subprocess.Popen(command, cwd=ws.root, env=env, stderr=subprocess.PIPE, text=True) as first:
        assert first.stderr is not None
        line = first.stderr.readline()
        assert "failpoint after_index_commit: reached" in line, line + first.stderr.read()
        # Two commits are on S3, unpublished: readers still get the version before the run.
        assert index.open(before.table).version > before.version
        assert index.live().version == before.version
        found = json.loads(ws.rp("query", "kettle", "--json", **location_env(ws, uri), check=True).stdout)
        assert found["index_version"] == before.version
        # A second run (another process, as from another machine) is refused with the holder's name.
        second = ws.rp("embed", **location_env(ws, uri))
        first.send_signal(signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL
    assert second.returncode == 75, second.stderr
    assert f"is being updated by another embedding run (pid {first.pid} on " in second.stderr
    assert "Traceback" not in second.stderr

    # The lease's holder is gone (same machine, dead pid): the rerun takes it over and converges.
    rerun = ws.rp("embed", "--json", **location_env(ws, uri), RP_VARS=SMALL_COMMITS, check=True)
    assert json.loads(rerun.stdout)["published"]
    assert_same_index(live_rows(index), expected)
    assert ws.rp("verify", **location_env(ws, uri)).returncode == 0


def test_a_lease_held_elsewhere_refuses_a_run_until_it_expires(base, s3_server):
    ws, source, _ = base
    uri = copy_prefix(s3_server, source)
    objects = S3Objects(settings_for(ws, uri).index_dir)
    foreign = {"pid": 4242, "host": "build-box-7", "boot_id": "elsewhere", "started": "earlier", "ttl_seconds": 60}
    assert objects.create(LEASE_OBJECT, json.dumps(foreign).encode())

    refused = ws.rp("embed", **location_env(ws, uri))
    assert refused.returncode == 75
    assert "another embedding run (pid 4242 on build-box-7" in refused.stderr and "expires in" in refused.stderr
    assert objects.read(LEASE_OBJECT).data == json.dumps(foreign).encode()  # still theirs

    # Its holder stopped renewing it and its time ran out (by the server's clock): the next run takes it over.
    held = objects.read(LEASE_OBJECT)
    assert objects.replace_if(LEASE_OBJECT, json.dumps(foreign | {"ttl_seconds": 0}).encode(), held.etag)
    assert ws.rp("embed", "--json", **location_env(ws, uri), check=True).returncode == 0
    assert objects.read(LEASE_OBJECT) is None  # released at the end of the run


def test_the_pointer_is_a_conditional_put_and_a_run_that_lost_its_lease_publishes_nothing(base, s3_server):
    ws, source, _ = base
    uri = copy_prefix(s3_server, source)
    index = VectorIndex(settings_for(ws, uri).index_dir)
    pointer = index.live()
    table = index.open(pointer.table)
    model = fingerprint_of(pointer)

    read = index.storage.read(LIVE_FILE)
    moved = json.loads(read.data) | {"run_id": "another-publisher"}
    index.storage.replace(LIVE_FILE, json.dumps(moved).encode(), read)  # another process published meanwhile
    with pytest.raises(PointerConflictError, match="changed after this run read it"):
        index.storage.replace(LIVE_FILE, read.data, read)

    with index.lock():
        taken = index.storage.read(LEASE_OBJECT)
        index.storage.replace_if(LEASE_OBJECT, b'{"pid": 1, "host": "elsewhere", "ttl_seconds": 60}', taken.etag)
        with pytest.raises(LeaseLostError, match="was taken over by another run"):
            index.publish(table, model, run_id="lost-its-lease")
    assert index.live().run_id == "another-publisher"


# --- damage and repair ------------------------------------------------------------------------------


def test_verify_finds_a_damaged_object_and_repair_rebuilds_it(base, s3_server):
    ws, source, _ = base
    uri = copy_prefix(s3_server, source)
    pointer = VectorIndex(settings_for(ws, uri).index_dir).live()
    client, prefix = s3_server.client(), uri.removeprefix(f"s3://{s3_server.bucket}/")
    data = f"{prefix}/{pointer.table}.lance/data/"
    [damaged, *_] = [item["Key"] for item in client.list_objects_v2(Bucket=s3_server.bucket, Prefix=data)["Contents"]]
    body = client.get_object(Bucket=s3_server.bucket, Key=damaged)["Body"].read()
    client.put_object(Bucket=s3_server.bucket, Key=damaged, Body=body[: len(body) // 2])  # cut short

    found = ws.rp("verify", "--json", **location_env(ws, uri))
    report = json.loads(found.stdout)
    assert found.returncode == 1 and report["problems"]["unreadable_live_index"] == 1
    assert f"data file s3://{s3_server.bucket}/{damaged} is truncated (its Lance footer is missing)" in report["notes"]

    repaired = ws.rp("verify", "--repair", "--json", **location_env(ws, uri))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert json.loads(repaired.stdout.splitlines()[-1])["healthy"]


# --- upkeep on S3 -----------------------------------------------------------------------------------


def test_upkeep_builds_indexes_compacts_and_cleans_up_without_losing_the_pinned_version(s3_server, tmp_path):
    from python_jobs.index.store import pin
    from python_jobs.index.upkeep import build_ann_index, compact_and_clean_up, upkeep

    index = VectorIndex(
        Settings.load(
            env={ENV_INDEX_DIR: s3_server.uri(f"upkeep-{uuid.uuid4().hex[:8]}"), ENV_INDEX_SCRATCH_DIR: str(tmp_path)}
        ).index_dir
    )
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"c{i:03d}" for i in range(300)]
    rows = {
        "chunk_id": ids,
        "doc_id": [f"d{i % 7}" for i in range(300)],
        "access_level": ["public"] * 300,
        "doc_type": ["faq"] * 300,
        "embedding_text": [f"text number {i}" for i in range(300)],
    }
    table = index.db.create_table("t", pa.table({**rows, "vector": pa.array(list(vectors), pa.list_(pa.float32(), 8))}))
    for start in range(0, 300, 100):  # versions to clean up
        table.delete(f"chunk_id in ({', '.join(repr(i) for i in ids[start : start + 3])})")
    time.sleep(1.1)  # cleanup keeps what is less than a second older than the pinned version
    table.delete("chunk_id = 'c299'")
    pin(table, "live")
    pinned = table.version
    table.delete("chunk_id = 'c010'")

    report = upkeep(table, keep_days=0)
    assert report.scalar_indexes and report.fts_index == "created"
    assert build_ann_index(table) >= 0 and any(tuple(i.columns) == ("vector",) for i in table.list_indices())
    removed = compact_and_clean_up(table, keep_days=0)
    assert removed >= pinned - 1  # the versions before the pinned one
    assert pinned in {v["version"] for v in table.list_versions()}
    table.checkout(pinned)
    assert table.count_rows() == 300 - 10  # the pinned version is still readable
    table.checkout_latest()
    assert table.search(vectors[5]).limit(1).to_list()[0]["chunk_id"] == "c005"


# --- configuration and unreachable stores ------------------------------------------------------------


def test_a_bad_endpoint_wrong_credentials_or_a_missing_bucket_is_one_error_line_not_a_hang(base, s3_server):
    ws, uri, _ = base
    closed = f"http://127.0.0.1:{free_port()}"
    cases = {
        "endpoint": ({"AWS_ENDPOINT_URL": closed, "AWS_ENDPOINT_URL_S3": closed}, uri, f"endpoint {closed} cannot be"),
        "credentials": ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, uri, "refused the credentials (SignatureDoes"),
        "bucket": ({}, "s3://no-such-bucket-here/index", "the bucket no-such-bucket-here does not exist"),
    }
    for name, (env, target, message) in cases.items():
        for command in (("query", "kettle"), ("embed",), ("verify",)):
            started = time.perf_counter()
            result = ws.rp(*command, **location_env(ws, target), **env)
            assert result.returncode == 1, (name, command, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, command, lines)
            assert s3_server.secret_access_key not in result.stderr and "not-the-secret" not in result.stderr
            assert time.perf_counter() - started < 20, (name, command)


def test_secrets_in_vars_and_unsupported_schemes_are_refused_with_the_setting_named(base):
    ws, uri, _ = base
    secret = ws.rp(
        "config", **location_env(ws, uri), RP_VARS="{embedding: {storage_options: {aws_secret_access_key: hunter2}}}"
    )
    assert secret.returncode == 2 and "hunter2" not in secret.stderr + secret.stdout
    assert "embedding.storage_options.aws_secret_access_key is a secret: set it in the environment" in secret.stderr
    scheme = ws.rp("query", "kettle", **location_env(ws, "gs://bucket/index"))
    assert scheme.returncode == 2 and "RP_INDEX_DIR uses gs://, which is not supported" in scheme.stderr


def test_storage_options_in_vars_point_both_clients_at_the_endpoint(base, s3_server):
    ws, uri, _ = base
    options = (
        f'{{embedding: {{storage_options: {{endpoint: "{s3_server.endpoint}", allow_http: true, region: us-east-1}}}}}}'
    )
    unset = dict.fromkeys(("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ALLOW_HTTP", "AWS_REGION"))
    found = ws.rp("query", "kettle app", "--mode", "fts", "--json", **location_env(ws, uri), RP_VARS=options, **unset)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["doc_id"] == KETTLE_ID
