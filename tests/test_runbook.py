"""Every command docs/runbook.md names exists, with the options it shows.

`make` targets are checked against the Makefile, the options in ARGS against the --help of
the job (or dbt command) the target runs; other programs must be on PATH. The SQL of its
`make sql` diagnoses runs against a real warehouse in tests/test_observability.py.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_DIR

RUNBOOK = PROJECT_DIR / "docs" / "runbook.md"
MAKEFILE = PROJECT_DIR / "Makefile"
PLAYBOOKS = (
    "stale-source",
    "stale-index",
    "failing-data-test",
    "eval-regression",
    "budget-exceeded",
    "embedding-model-change",
    "corrupted-or-missing-index",
    "locked-warehouse",
)


def runbook_commands() -> list[str]:
    """Each command line of the runbook's shell blocks, and each `make ...` in its text."""
    text = RUNBOOK.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        commands += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    prose = re.sub(r"```sh\n.*?```", "", text, flags=re.S)
    commands += re.findall(r"`((?:[A-Z_]+=\S+ )*make [^`]+)`", prose)
    return commands


def sql_diagnoses() -> list[str]:
    commands = [c for c in runbook_commands() if _make_target(c) == "sql" and "Q=" in c]
    return [_make_variables(shlex.split(c))["Q"] for c in commands]


def _words(command: str) -> list[str]:
    return shlex.split(command.replace("<", "").replace(">", ""))


def _make_target(command: str) -> str | None:
    words = [w for w in _words(command) if not re.match(r"^[A-Z_]+=", w)]
    return words[1] if words[:1] == ["make"] and len(words) > 1 else None


def _make_variables(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))


@functools.cache
def _recipes() -> dict[str, str]:
    """Makefile target -> its recipe lines."""
    recipes, target = {}, None
    for line in MAKEFILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([a-z][a-z-]*):", line)
        if match:
            target = match.group(1)
            recipes[target] = ""
        elif target and line.startswith("\t"):
            recipes[target] += line + "\n"
    return recipes


@functools.cache
def _help(target: str) -> str:
    recipe = _recipes()[target]
    job = re.search(r"\$\(JOB\)\.(\w+)", recipe)
    dbt = re.search(r"\$\(DBT\) ((?:source )?\w+)", recipe)
    if job:
        command = [sys.executable, "-m", f"python_jobs.{job.group(1)}", "--help"]
    elif dbt:
        command = [str(Path(sys.executable).with_name("dbt")), *dbt.group(1).split(), "--help"]
    else:
        pytest.fail(f"make {target} runs neither a job nor dbt: {recipe!r}")
    return subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout


def test_the_runbook_has_every_playbook_the_alerts_link_to():
    from python_jobs.observe.findings import PLAYBOOKS as LINKED

    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), flags=re.M)
    }
    assert set(PLAYBOOKS) <= headings
    assert set(LINKED.values()) <= headings


@pytest.mark.parametrize("command", runbook_commands())
def test_every_runbook_command_exists(command):
    words = _words(command)
    target = _make_target(command)
    if target is None:
        assert shutil.which(words[0]), f"{words[0]} (in {command!r}) is not on PATH"
        return
    assert target in _recipes(), f"make {target} (in {command!r}) is not a Makefile target"
    arguments = _make_variables(words).get("ARGS", "")
    for option in re.findall(r"(?<!\S)(--?[a-z][a-z-]*)", arguments):
        assert re.search(rf"(?<![\w-]){re.escape(option)}\b", _help(target)), (
            f"{option} (in {command!r}) is not an option of what make {target} runs"
        )


def test_the_runbook_names_diagnoses_for_the_ops_marts():
    queries = sql_diagnoses()
    assert len(queries) >= 10
    assert any("ops_node_status" in q for q in queries) and any("ops_index_chunks" in q for q in queries)
