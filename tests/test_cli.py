"""One command line: `rp` lists every step, each command's help ends with an example, errors are one
line with an exit code, and the make targets call it."""

from __future__ import annotations

import re
import subprocess
import sys

import click
from click.testing import CliRunner

from python_jobs.cli import cli
from python_jobs.common.errors import ExitCode
from python_jobs.common.settings import PROJECT_DIR

COMMANDS = {"ingest", "build", "freshness", "dbt", "embed", "verify", "query", "eval", "eval-beir", "report"}
COMMANDS |= {"pipeline", "sql", "config"}


def visible_commands() -> dict[str, click.Command]:
    context = click.Context(cli, info_name="rp")
    commands = {name: cli.get_command(context, name) for name in cli.list_commands(context)}
    return {name: command for name, command in commands.items() if command and not command.hidden}


def test_rp_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    listed = set(re.findall(r"^  ([a-z-]+) ", commands, re.M))
    assert listed >= COMMANDS
    assert set(visible_commands()) == listed


def test_every_command_help_ends_with_an_example():
    for name, command in visible_commands().items():
        assert command.help and re.search(r"Example: .*\brp " + re.escape(name) + r"\b", command.help), name
        assert command.help.strip().splitlines()[-1].strip().startswith("Example:"), name


def test_python_m_python_jobs_is_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "python_jobs", "--help"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "eval-beir" in result.stdout


def test_a_bad_setting_is_one_error_line_and_exit_2_not_a_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["config"], env={"RP_VARS": "{embedding: [not, a, mapping]}"})
    assert result.exit_code == ExitCode.USAGE
    assert "Traceback" not in result.output and "embedding" in result.output


def test_every_make_target_that_runs_a_step_calls_the_cli():
    makefile = (PROJECT_DIR / "Makefile").read_text(encoding="utf-8")
    assert "python -m python_jobs." not in makefile
    for target in ("ingest", "build", "freshness", "embed", "verify", "query", "eval", "eval-beir", "report", "sql"):
        recipe = re.search(rf"^{re.escape(target)}: .*\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe and "$(RP) " in recipe.group(1), target


def test_make_passes_the_question_through_the_environment_never_the_shell(tmp_path):
    """`make query Q='"; echo PWNED; #'` must not run the shell command inside Q."""
    marker = tmp_path / "pwned"
    result = subprocess.run(
        ["make", "-n", "query", f'Q="; touch {marker}; #'],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert str(marker) not in result.stdout
    assert '"$Q"' in result.stdout
