"""The scale generator: reproducible, varied, valid for the whole pipeline, and mutable."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

from python_jobs.common.settings import PROJECT_DIR
from tests.worlds import SKIP_OPS, Workspace

SMALL = ("--docs", "40", "--customers", "60", "--products", "120", "--transactions", "600")


def generate(out, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/generate_data.py", "--out", str(out), *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    )


def tree_digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path):
    generate(tmp_path / "a", *SMALL, "--seed", "3")
    generate(tmp_path / "b", *SMALL, "--seed", "3")
    generate(tmp_path / "c", *SMALL, "--seed", "4")

    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_generated_documents_vary_in_wording_and_shape(tmp_path):
    generate(tmp_path / "g", *SMALL)
    docs = sorted((tmp_path / "g" / "docs").rglob("*.md"))
    paragraphs = [
        block
        for doc in docs
        for block in doc.read_text(encoding="utf-8").split("\n\n")
        if block and not block.startswith(("#", "---", "1.", "## Legal notice"))
    ]
    section_counts = {len(re.findall(r"^## ", d.read_text(encoding="utf-8"), re.MULTILINE)) for d in docs}

    assert len(docs) == 40
    assert len(set(paragraphs)) / len(paragraphs) > 0.95
    assert len(section_counts) >= 5


def test_generated_zone_builds_green_and_a_mutation_reloads_only_what_changed(tmp_path):
    ws = Workspace(tmp_path / "ws")
    generate(ws.landing, *SMALL)
    ws.ingest(check=True)
    ws.dbt("build", *SKIP_OPS, check=True)
    files_before = len(list(ws.landing.rglob("*.*")))

    mutation = json.loads(generate(ws.landing, "--mutate", "0.1", "--seed", "9").stdout)
    summary = json.loads(ws.ingest("--json", check=True).stdout)
    build = ws.dbt("build", *SKIP_OPS)

    assert mutation["documents_edited"] == mutation["documents_deleted"] == mutation["documents_added"] == 4
    assert summary["files_removed"] == 4
    assert summary["files_new"] == 4 + 1  # new documents and a late transactions file
    assert 0 < summary["files_changed"] < files_before / 2
    assert summary["files_unchanged"] > files_before / 2
    assert build.returncode == 0, build.stdout[-3000:]
    (docs,) = ws.query("select count(*) from raw.docs_documents")[0]
    assert docs == 40
