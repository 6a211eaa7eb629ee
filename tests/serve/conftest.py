"""A real service for the tests: the app on uvicorn, in a thread of the test process, on a free port of
127.0.0.1, over a real index (the shared search world's, read-only), with its own key file, log dir and
settings. The model is loaded once per test process and shared by every server a module starts."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from python_jobs.common.settings import ENV_INDEX_DIR, ENV_KEYS_PATH, ENV_SERVE_LOG_DIR, ENV_VARS, Settings
from python_jobs.serve.app import create_app
from python_jobs.serve.keys import create_key
from python_jobs.serve.server import bind
from python_jobs.serve.service import Service
from tests.worlds import Workspace

# Fast polls and flushes, so revocations, swaps and log files show within a test's patience.
FAST = "{serve: {index_poll_seconds: 0.2, keys_poll_seconds: 0.2, log_flush_seconds: 0.2, max_body_bytes: 4096}}"


def serve_settings(
    index_dir: Path, root: Path, vars_yaml: str = FAST, log_dir: Path | None = None, **env: str
) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    return Settings.load(
        env={
            ENV_INDEX_DIR: str(index_dir),
            ENV_KEYS_PATH: str(root / "keys" / "keys.json"),
            ENV_SERVE_LOG_DIR: str(log_dir or root / "serve_log"),
            ENV_VARS: vars_yaml,
            **env,
        }
    )


@dataclass
class Server:
    url: str
    settings: Settings
    service: Service
    keys: dict[str, str] = field(default_factory=dict)  # name -> key
    session: requests.Session = field(default_factory=requests.Session)

    def add_key(self, name: str, level: str, rate: float | None = 1000.0, daily_tokens: int | None = None) -> str:
        """A new key, written to the key file; returns once the service has read it."""
        created = create_key(self.settings.keys_path, name, level, rate, daily_tokens)
        self.keys[name] = created.secret
        deadline = time.monotonic() + 10
        while self.service.keys.authenticate(created.secret) is None:
            assert time.monotonic() < deadline, f"the service did not read the new key {name!r}"
            time.sleep(0.02)
        return created.secret

    def post(self, path: str, body, key: str | None = "internal", **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        return self.session.post(self.url + path, json=body, headers=headers, timeout=60, **kwargs)

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url + path, timeout=60)

    def flush_log(self) -> None:
        self.service.writer.flush()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Server]:
    """The service for `settings` on a free port, ready (its index open) when yielded."""
    import uvicorn

    service = Service(settings)
    app = create_app(settings, service)
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    running_server = Server(url, settings, service)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                if running_server.get("/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the service at {url} did not get ready: {service.readiness()}")
        yield running_server
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def add_keys(server: Server) -> None:
    for level in ("public", "internal", "confidential"):
        server.add_key(level, level)


@pytest.fixture(scope="module")
def server(search_world: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service per module over the search world's index, with a key per access level."""
    root = tmp_path_factory.mktemp("serve")
    with running(serve_settings(search_world.index, root)) as running_server:
        add_keys(running_server)
        yield running_server
