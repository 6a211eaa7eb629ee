"""`rp keys` and `rp serve` as a user runs them: a key printed once and stored as a hash, and the service
as a process of its own on 127.0.0.1 that drains its query log when stopped."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import requests
from click.testing import CliRunner

from python_jobs.cli import cli
from python_jobs.common.errors import ExitCode
from python_jobs.common.settings import ENV_INDEX_DIR, ENV_KEYS_PATH, ENV_SERVE_LOG_DIR, ENV_VARS, PROJECT_DIR
from python_jobs.serve.server import is_loopback
from tests.worlds import Workspace


def rp(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_keys_are_printed_once_stored_as_hashes_listed_and_revoked(tmp_path):
    env = {ENV_KEYS_PATH: str(tmp_path / "keys" / "keys.json")}
    created = rp(env, "keys", "create", "--name", "support-bot", "--access-level", "internal", "--rate", "600/min")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"rp_[A-Za-z0-9_-]{43}", key), "the key is the last line of the output"
    stored = json.loads((tmp_path / "keys" / "keys.json").read_text(encoding="utf-8"))["keys"]
    assert key not in json.dumps(stored)
    assert stored == [
        {
            "name": "support-bot",
            "key_hash": hashlib.sha256(key.encode()).hexdigest(),
            "key_prefix": key[:6],
            "access_level": "internal",
            "rate_per_second": 10.0,
            "daily_tokens": None,
            "created_at": stored[0]["created_at"],
            "revoked_at": None,
        }
    ]
    assert oct((tmp_path / "keys" / "keys.json").stat().st_mode & 0o777) == "0o600"

    listed = rp(env, "keys", "list")
    assert "support-bot" in listed.stdout and key[:6] + "..." in listed.stdout and key not in listed.stdout
    as_json = json.loads(rp(env, "keys", "list", "--json").stdout)
    assert [k["name"] for k in as_json["keys"]] == ["support-bot"] and key not in json.dumps(as_json)

    twice = rp(env, "keys", "create", "--name", "support-bot", "--access-level", "public")
    assert twice.exit_code == ExitCode.USAGE and "a key named 'support-bot' exists" in twice.output
    for bad, message in (
        (["--access-level", "secret"], "'secret' is not one of"),
        (["--access-level", "public", "--rate", "fast"], "--rate 'fast' is not a rate"),
        (["--access-level", "public", "--daily-tokens", "0"], "--daily-tokens"),
    ):
        refused = rp(env, "keys", "create", "--name", "other", *bad)
        assert refused.exit_code == ExitCode.USAGE and message in refused.output and "Traceback" not in refused.output

    revoked = rp(env, "keys", "revoke", "support-bot")
    assert revoked.exit_code == 0 and "revoked key 'support-bot'" in revoked.stdout
    again = rp(env, "keys", "revoke", "support-bot")
    assert again.exit_code == ExitCode.USAGE and "no active key named 'support-bot'" in again.output
    assert rp(env, "keys", "create", "--name", "support-bot", "--access-level", "public").exit_code == 0


def test_rp_serve_answers_on_loopback_and_drains_its_query_log_when_stopped(search_world: Workspace, tmp_path):
    env = {
        ENV_INDEX_DIR: str(search_world.index),
        ENV_KEYS_PATH: str(tmp_path / "keys.json"),
        ENV_SERVE_LOG_DIR: str(tmp_path / "serve_log"),
        # No flush while it runs: whatever reaches the log was written by the shutdown.
        ENV_VARS: "{serve: {log_flush_seconds: 3600}}",
    }
    key = rp(env, "keys", "create", "--name", "app", "--access-level", "public").stdout.strip().splitlines()[-1]
    process = subprocess.Popen(
        [sys.executable, "-m", "python_jobs", "serve", "--port", "0"],
        cwd=PROJECT_DIR,
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stderr.readline()
        match = re.search(r"serving on (http://127\.0\.0\.1:(\d+))", banner)
        assert match, banner
        url, port = match.group(1), match.group(2)
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "rp serve did not get ready"
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        for mode in ("vector", "fts", "hybrid"):
            response = requests.post(
                url + "/v1/search", json={"query": "descale the kettle", "mode": mode}, headers=headers
            )
            assert response.status_code == 200, response.text

        busy = subprocess.run(
            [sys.executable, "-m", "python_jobs", "serve", "--port", port],
            cwd=PROJECT_DIR,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert busy.returncode == ExitCode.USAGE
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "Traceback" not in busy.stderr

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rows = ds.dataset(str(tmp_path / "serve_log" / "query_log"), format="parquet").to_table().to_pylist()
    assert sorted(row["mode"] for row in rows) == ["fts", "hybrid", "vector"]
    assert {row["caller"] for row in rows} == {"app"} and key not in banner + stderr


def test_only_loopback_addresses_count_as_local():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"))
