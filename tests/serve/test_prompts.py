"""Prompt files: checked when read, with errors naming the file; label changes picked up by a running
service; a broken change keeps the versions read before. And a broken key file: refused at start,
reported but survived while running."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import PROJECT_DIR
from python_jobs.serve.keys import KeyRing, KeyStoreError, create_key
from python_jobs.serve.prompts import load_prompts
from tests.serve.conftest import running, serve_settings
from tests.worlds import Workspace

PROMPTS = PROJECT_DIR / "prompts"


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    copy = tmp_path / "prompts"
    shutil.copytree(PROMPTS, copy)
    return copy


def test_the_shipped_prompts_have_production_and_staging_versions():
    catalog = load_prompts(PROMPTS)
    labels = catalog.labels["answer_with_citations"]
    assert labels == {"production": "v1", "staging": "v2"}
    assert set(catalog.prompts["answer_with_citations"]) >= {"v1", "v2"}


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        (
            "answer_with_citations/v3.yml",
            "template: x\nmodel: {}\ncreated: 2026-12-01\n",
            "release_note: Field required",
        ),
        (
            "answer_with_citations/v3.yml",
            "template: '{{ context'\nmodel: {}\nrelease_note: r\ncreated: 2026-12-01\n",
            "does not render",
        ),
        (
            "answer_with_citations/v3.yml",
            "template: '{{ answer }}'\nmodel: {}\nrelease_note: r\ncreated: 2026-12-01\n",
            "does not render",
        ),
        (
            "answer_with_citations/v3.yml",
            "template: x\nmodel: {}\nrelease_note: r\ncreated: 2026-12-01\nauthor: me\n",
            "author: Extra inputs",
        ),
        (
            "answer_with_citations/latest.yml",
            "template: x\nmodel: {}\nrelease_note: r\ncreated: 2026-12-01\n",
            "<name>/<version>.yml",
        ),
        ("labels.yml", "answer_with_citations: {production: v9}\n", "points at 'v9'"),
        ("labels.yml", "other_prompt: {production: v1}\n", "'other_prompt' is not a prompt"),
    ],
)
def test_a_broken_prompt_file_is_an_error_naming_it(prompts, file, text, message):
    (prompts / file).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as error:
        load_prompts(prompts)
    assert str(prompts / file) in str(error.value)


def test_a_running_service_follows_label_changes_and_survives_a_broken_file(search_world: Workspace, prompts, tmp_path):
    vars_yaml = f"{{serve: {{index_poll_seconds: 0.2, keys_poll_seconds: 0.2, prompts_dir: '{prompts}'}}}}"
    with running(serve_settings(search_world.index, tmp_path / "root", vars_yaml)) as server:
        server.add_key("app", "public")

        def staging() -> str:
            body = {"query": "descale the kettle", "max_tokens": 100, "prompt": "answer_with_citations:staging"}
            return server.post("/v1/context", body, key="app").json()["prompt_version"]

        assert staging() == "answer_with_citations@v2"
        (prompts / "labels.yml").write_text("answer_with_citations: {production: v1, staging: v1}\n", encoding="utf-8")
        deadline = time.monotonic() + 5
        while staging() != "answer_with_citations@v1":
            assert time.monotonic() < deadline, "a label change must be served within seconds"
            time.sleep(0.1)

        (prompts / "answer_with_citations" / "v1.yml").write_text("template: '{{ broken'\n", encoding="utf-8")
        deadline = time.monotonic() + 5
        while not any("error" in p for p in server.get("/readyz").json()["prompts"]):
            assert time.monotonic() < deadline, "a broken prompt file must show on /readyz"
            time.sleep(0.1)
        assert staging() == "answer_with_citations@v1", "the versions read before keep serving"


def test_a_broken_key_file_stops_the_start_but_not_a_running_service(tmp_path):
    path = tmp_path / "keys.json"
    created = create_key(path, "app", "public")
    ring = KeyRing(path)
    good = path.read_text(encoding="utf-8")
    path.write_text('{"keys": [{"name": "app"}]}', encoding="utf-8")
    with pytest.raises(KeyStoreError, match=r"keys\[0\]: access_level is missing"):
        KeyRing(path)
    assert ring.refresh() is False and "access_level is missing" in ring.error
    assert ring.authenticate(created.secret) is not None, "the keys read before still work"
    path.write_text(good, encoding="utf-8")
    ring.refresh()
    assert ring.error is None and ring.authenticate(created.secret).name == "app"
    assert ring.authenticate(created.secret + "x") is None
