"""The docs stay runnable: every command, path and import the README and docs/ quote exists.

Commands are read from the pages' code blocks and inline code:
- `make X`: X is a Makefile target, every VAR=value given to make is a variable the Makefile
  reads, and every option in ARGS is an option of what the target's recipe runs (an `rp`
  command, dbt through it, or a bench script);
- `rp CMD --opt`: CMD is a command of the click group python_jobs.cli:cli and --opt one of its
  options (or, for the commands that hand their arguments to dbt, one of dbt's);
- other lines of a shell block: the program is on PATH.
A table headed "Option of `make X ARGS=...`" lists only options of X. Options are read from
the click objects themselves; no process is spawned. Quoted `python_jobs/...` paths must exist,
`python_jobs.x.y` names and `from python_jobs.x import y` lines must import, and links between
pages must reach a page and a heading. The README's exit codes are the ones in
python_jobs/common/errors.py, and its project layout names real folders. The SQL of the
runbook's `make sql` diagnoses runs against a real warehouse in
tests/observe/test_observability.py (`sql_diagnoses`).
"""

from __future__ import annotations

import functools
import importlib
import re
import shlex
import shutil
import sys
from pathlib import Path

import click
import pytest

from python_jobs.common.settings import PROJECT_DIR

RUNBOOK = PROJECT_DIR / "docs" / "runbook.md"
README = PROJECT_DIR / "README.md"
MAKEFILE = PROJECT_DIR / "Makefile"
PAGES = (README, *sorted((PROJECT_DIR / "docs").glob("*.md")))
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
SHELL_BLOCKS = {"sh", "bash", "shell"}
TRANSCRIPTS = {"console"}  # `$ command` lines, the rest is output
# The rp commands that hand the rest of their arguments to dbt, and the dbt command they run;
# `rp dbt` runs whichever dbt command its first arguments name.
DBT_COMMANDS = {"build": ("build",), "freshness": ("source", "freshness"), "dbt": ()}
PLACEHOLDER = "..."

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Z_]+=")
COMMAND = re.compile(r"""^(?:[A-Z_]+=(?:'[^']*'|"[^"]*"|\S+)\s+)*(?:make|rp)\s""")
OPTION = re.compile(r"^--?[A-Za-z][\w-]*")


# --- reading the pages --------------------------------------------------------------------------


@functools.cache
def _text(page: Path) -> str:
    # A `|` inside a table cell is written `\|`.
    return page.read_text(encoding="utf-8").replace("\\|", "|")


def _prose(page: Path) -> str:
    return FENCE.sub("", _text(page))


def shell_lines(page: Path) -> list[str]:
    """Each command line of the page's shell code blocks and console transcripts."""
    lines = []
    for language, block in FENCE.findall(_text(page)):
        stripped = [line.strip() for line in block.splitlines()]
        if language in SHELL_BLOCKS:
            lines += [line for line in stripped if line and not line.startswith("#")]
        elif language in TRANSCRIPTS:
            lines += [line.removeprefix("$ ") for line in stripped if line.startswith("$ ")]
    return lines


def quoted_commands(page: Path) -> list[str]:
    """Every `make ...` and `rp ...` the page quotes: code block lines and inline code."""
    commands = []
    for _, block in FENCE.findall(_text(page)):
        lines = (line.strip().removeprefix("$ ") for line in block.splitlines())
        commands += [line for line in lines if COMMAND.match(line)]
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", _prose(page)))
    return commands + [span for span in spans if COMMAND.match(span)]


def runbook_commands() -> list[str]:
    """Each command line of the runbook's shell blocks, and each `make ...` in its text."""
    prose = [c for c in quoted_commands(RUNBOOK) if c not in shell_lines(RUNBOOK)]
    return shell_lines(RUNBOOK) + prose


def sql_diagnoses() -> list[str]:
    commands = [c for c in runbook_commands() if _words(c)[:2] == ["make", "sql"] and "Q=" in c]
    return [_make_variables(_words(c))["Q"] for c in commands]


def _split(command: str) -> tuple[list[str], list[str]]:
    """The environment variables a command line sets, and its words without them or a trailing comment."""
    words = shlex.split(command, comments=True)
    environment = []
    while words and ASSIGNMENT.match(words[0]):
        environment.append(words.pop(0).split("=", 1)[0])
    return environment, words


def _words(command: str) -> list[str]:
    return _split(command)[1]


def _make_variables(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words[1:] if ASSIGNMENT.match(w))


def _options(words: list[str]) -> list[str]:
    """The options among a command's words (--name=value counts as --name), up to `--`."""
    options = []
    for word in words:
        if word == "--":
            break
        match = OPTION.match(word)
        if match:
            options.append(match.group(0))
    return options


# --- what the commands name -----------------------------------------------------------------------


@functools.cache
def _makefile() -> tuple[dict[str, str], dict[str, str]]:
    """Makefile target -> its recipe, and variable -> its value."""
    recipes, variables, target = {}, {}, None
    for line in MAKEFILE.read_text(encoding="utf-8").splitlines():
        assignment = re.match(r"^([A-Z_]+)\s*(?::=|\?=|=)\s*(.*)$", line)
        rule = re.match(r"^([a-z][a-z-]*):(?!=)", line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            target = None
        elif rule:
            target = rule.group(1)
            recipes[target] = ""
        elif target and line.startswith("\t"):
            recipes[target] += line.strip().lstrip("@-") + "\n"
    return recipes, variables


def _expand(text: str) -> str:
    variables = _makefile()[1]
    for _ in range(10):
        text = re.sub(r"(?<!\$)\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
    return text


def _reads_variable(name: str) -> bool:
    makefile = MAKEFILE.read_text(encoding="utf-8")
    return bool(re.search(rf"\$\({name}\)|\$\$\{{?{name}\b|^ifn?def {name}$", makefile, flags=re.M))


def _args_command(target: str) -> list[str]:
    """The command a target's recipe hands ARGS to, up to ARGS, its make variables expanded."""
    for line in _makefile()[0][target].splitlines():
        for segment in re.split(r"&&|\|\||;", line):
            if "$(ARGS)" in segment:
                return shlex.split(_expand(segment.split("$(ARGS)")[0]))
    pytest.fail(f"make {target} does not pass ARGS to anything: {_makefile()[0][target]!r}")


@functools.cache
def _rp() -> click.Group:
    from python_jobs.cli import cli

    return cli


def _click_options(command: click.Command) -> set[str]:
    context = click.Context(command)
    return {opt for param in command.get_params(context) for opt in (*param.opts, *param.secondary_opts)}


def _dbt_command(words: tuple[str, ...]) -> click.Command | None:
    """The dbt command the leading words name (`build`, `source freshness`), if any."""
    from dbt.cli.main import cli as dbt

    command: click.Command = dbt
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    return None if command is dbt else command


def _rp_options(words: list[str]) -> tuple[str, set[str]]:
    """What `rp WORDS` runs, and the options it accepts; ("", ...) for a command that does not exist."""
    group = _rp()
    first = next((i for i, word in enumerate(words) if not word.startswith("-")), len(words))
    if first == len(words):  # `rp --help`
        return "rp", _click_options(group)
    rest = words[first:]
    command = group.get_command(click.Context(group), rest[0])
    if command is None:
        return "", set()
    # A subcommand of a command group (`rp eval promote-feedback`) takes its own options.
    while isinstance(command, click.Group) and len(rest) > 1 and rest[1] in command.commands:
        rest = [f"{rest[0]} {rest[1]}", *rest[2:]]
        command = command.commands[rest[0].split()[-1]]
    # Options before the command name are the group's (`rp --help`, `rp --version`).
    accepted = _click_options(command) | (_click_options(group) if first else set())
    if rest[0] in DBT_COMMANDS:
        dbt_words = DBT_COMMANDS[rest[0]] or tuple(w for w in rest[1:3] if not w.startswith("-"))
        dbt_command = _dbt_command(dbt_words)
        if dbt_command is not None:
            accepted |= _click_options(dbt_command)
    return f"rp {rest[0]}", accepted


def _script_options(words: list[str]) -> tuple[str, set[str]] | None:
    """The options of a bench script (`python bench/x.py`) or a module (`python -m x`) with a click main."""
    if len(words) > 1 and words[1].endswith(".py"):
        path = PROJECT_DIR / words[1]
        module_name = path.stem
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
    elif words[1:2] == ["-m"] and len(words) > 2:
        module_name = words[2]
    else:
        return None
    try:
        main = importlib.import_module(module_name).main
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{' '.join(words[:3])} cannot be read: {exc}")
    return module_name, _click_options(main) if isinstance(main, click.Command) else set()


def _accepted_options(words: list[str]) -> tuple[str, set[str]]:
    """What a command line runs, and the options that accepts."""
    program = Path(words[0]).name
    if program == "rp":
        return _rp_options(words[1:])
    if program.startswith("python") and words[1:3] == ["-m", "python_jobs"]:
        return _rp_options(words[3:])
    if program.startswith("python"):
        script = _script_options(words)
        if script is not None:
            return script
    if program == "dbt":
        dbt_command = _dbt_command(tuple(words[1:3]))
        return "dbt", _click_options(dbt_command) if dbt_command else set()
    pytest.fail(f"cannot tell which options {' '.join(words)!r} accepts")


# --- the checks of one command --------------------------------------------------------------------


def make_problems(command: str) -> list[str]:
    words = _words(command)
    recipes = _makefile()[0]
    targets = [w for w in words[1:] if not ASSIGNMENT.match(w) and not w.startswith("-") and w != PLACEHOLDER]
    problems = [f"make {t} is not a Makefile target" for t in targets if t not in recipes]
    variables = _make_variables(words)
    problems += [f"the Makefile does not read {name}" for name in variables if not _reads_variable(name)]
    arguments = shlex.split(variables.get("ARGS", ""))
    for target in (t for t in targets if t in recipes and arguments):
        runs, accepted = _accepted_options(_args_command(target))
        problems += [
            f"{option} is not an option of {runs} (what make {target} runs)"
            for option in _options(arguments)
            if option not in accepted
        ]
    return problems


def rp_problems(command: str) -> list[str]:
    words = _words(command)
    runs, accepted = _rp_options(words[1:])
    if not runs:
        return [f"rp {next(w for w in words[1:] if not w.startswith('-'))} is not a command of python_jobs.cli:cli"]
    return [f"{option} is not an option of {runs}" for option in _options(words[1:]) if option not in accepted]


def command_problems(command: str) -> list[str]:
    environment, words = _split(command)
    problems = []
    for name in environment:
        if not re.search(rf"\b{name}\b", _python_jobs_source() + MAKEFILE.read_text(encoding="utf-8")):
            problems.append(f"{name} is read by neither the jobs nor the Makefile")
    if words[:1] == ["make"]:
        problems += make_problems(command)
    elif words[:1] == ["rp"]:
        problems += rp_problems(command)
    elif words and not shutil.which(words[0]) and not (PROJECT_DIR / words[0]).exists():
        problems.append(f"{words[0]} is not on PATH")
    return [f"{command!r}: {problem}" for problem in problems]


@functools.cache
def _python_jobs_source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((PROJECT_DIR / "python_jobs").rglob("*.py")))


def option_table_problems(page: Path) -> list[str]:
    """A table headed `Option of `make X ...`` (or `rp X`) lists only options of that command."""
    problems, command = [], None
    for line in _text(page).splitlines():
        header = re.match(r"^\|\s*Options? of `((?:make|rp) [^`]+)`", line)
        if header:
            command = header.group(1)
        elif command and line.startswith("|") and not re.match(r"^\|[\s:|-]+$", line):
            options = " ".join(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line.split("|")[1]))
            if command.startswith("rp"):
                problems += command_problems(f"{command} {options}")
            else:
                without_args = re.sub(r" ARGS=\S*", "", command)
                problems += command_problems(f"{without_args} ARGS={shlex.quote(options)}")
        elif not line.startswith("|"):
            command = None
    return problems


def path_problems(page: Path) -> list[str]:
    paths = {p.rstrip(".,") for p in re.findall(r"(?<![\w/.])python_jobs/[\w./-]*", _text(page))}
    return [f"{path} does not exist" for path in sorted(paths) if not (PROJECT_DIR / path).exists()]


def import_problems(page: Path) -> list[str]:
    """`from python_jobs.x import a, b`, `import python_jobs.x` and `python_jobs.x.y` names must import."""
    text = _text(page)
    problems = []
    for module, names in re.findall(r"from (python_jobs(?:\.\w+)*) import \(?([\w ,]+)\)?", text):
        for name in (n.split(" as ")[0].strip() for n in names.split(",")):
            if name and not _importable(f"{module}.{name}"):
                problems.append(f"from {module} import {name} fails")
    dotted = set(re.findall(r"(?<![\w/])(python_jobs(?:\.\w+)+)", text))
    problems += [f"{name} does not import" for name in sorted(dotted) if not _importable(name)]
    return problems


@functools.cache
def _importable(dotted: str) -> bool:
    """A module, or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


# --- the tests ----------------------------------------------------------------------------------


def test_the_runbook_has_every_playbook_the_alerts_link_to():
    from python_jobs.observe.findings import PLAYBOOKS as LINKED

    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), flags=re.M)
    }
    assert set(PLAYBOOKS) <= headings
    assert set(LINKED.values()) <= headings


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_a_page_quotes_exists(page):
    commands = dict.fromkeys(quoted_commands(page) + shell_lines(page))
    problems = [problem for command in commands for problem in command_problems(command)]
    problems += option_table_problems(page)
    assert not problems, f"{page.relative_to(PROJECT_DIR)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_and_import_a_page_quotes_exists(page):
    problems = path_problems(page) + import_problems(page)
    assert not problems, f"{page.relative_to(PROJECT_DIR)}:\n" + "\n".join(problems)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_between_pages_resolves(page):
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"^[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: {path} does not exist")
        elif anchor and anchor not in {_slug(h) for h in re.findall(r"^#+ (.+)$", _prose(target), flags=re.M)}:
            broken.append(f"{link}: {target.name} has no heading #{anchor}")
    assert not broken, f"{page.relative_to(PROJECT_DIR)}:\n" + "\n".join(broken)


def test_the_runbook_names_diagnoses_for_the_ops_marts():
    queries = sql_diagnoses()
    assert len(queries) >= 10
    assert any("ops_node_status" in q for q in queries) and any("ops_index_chunks" in q for q in queries)


def test_the_readme_exit_codes_are_the_ones_the_commands_return():
    from python_jobs.common.errors import ExitCode

    section = _text(README).split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    assert {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.M)} == {int(c) for c in ExitCode}


def test_the_readme_layout_names_real_folders():
    layout = next(block for _, block in FENCE.findall(_text(README)) if block.startswith("data/raw/"))
    missing = []
    for line in layout.splitlines():
        top = re.match(r"^([\w./-]+)\s", line)
        package = re.match(r"^  ([\w.]+/?)\s", line)
        if top and not (PROJECT_DIR / top.group(1)).exists():
            missing.append(top.group(1))
        if package and not (PROJECT_DIR / "python_jobs" / package.group(1)).exists():
            missing.append(f"python_jobs/{package.group(1)}")
    assert not missing, f"the README's project layout names what is not there: {missing}"


@pytest.mark.parametrize(
    "command",
    [
        "make nonesuch",
        "make embed ARGS=--nonesuch",
        "make query Q=x NONESUCH=1",
        "make build ARGS='--nonesuch'",
        "rp nonesuch",
        "rp embed --nonesuch",
        "rp dbt show --nonesuch",
        "NONESUCH_VAR=1 make embed",
        "nonesuch-program --help",
    ],
)
def test_the_check_catches_a_command_that_does_not_exist(command):
    assert command_problems(command)


@pytest.mark.parametrize(
    "command",
    [
        "make ingest build LANDING=x WAREHOUSE=y",
        "make chunks ARGS=--full-refresh",
        "make eval-beir DATA=x ARGS='--first-chunk-only --vars \"{a: 1}\"'",
        "make data SCALE=10 ARGS='--mutate 0.01'",
        "RP_VARS='{eval: {k: [1]}}' make eval",
        "rp --help",
        "rp build --select +document_chunks --full-refresh",
        "rp freshness --select source:shop",
        "rp dbt show --inline 'select 1' --limit 3",
        "rp query 'how' -k 3 --mode fts --documents --json",
    ],
)
def test_the_check_accepts_a_command_that_exists(command):
    assert not command_problems(command)
