"""`rp`: one command line over the library, one command per pipeline step.

Each command is thin: it loads the settings, calls one library function that returns a
summary, and prints it with the shared renderer (text, or `--json`). A failure the user can
fix is one `error:` line and an exit code from python_jobs/common/errors.py, never a
traceback. Stage modules are imported inside each command, so `rp embed` on an unchanged
index does not pay for importing the model, and `rp --help` answers at once.

The same commands run as `python -m python_jobs ...`; the make targets call them.
docs/cli.md is generated from this file (`rp reference`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from python_jobs.common.errors import ExitCode
from python_jobs.common.output import Summary, emit, run_job
from python_jobs.common.settings import PROJECT_DIR, EvalSettings, Settings
from python_jobs.search.filters import ACCESS_LEVELS

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
PROGRESS_OPTION = click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
DBT_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def settings() -> Settings:
    return run_job(Settings.load)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="retrieval-platform", prog_name="rp")
def cli() -> None:
    """Retrieval Platform: fresh, tested, measurable retrieval data.

    landing files -> ingest -> dbt build -> embed -> query / eval -> report. Every step reads
    the one configuration in dbt_project.yml `vars:` (override with RP_VARS) and prints a
    summary; add --json for a machine-readable one.

    Example: rp pipeline --full-refresh
    """


# --- land -------------------------------------------------------------------------------------


@cli.command()
@click.option("--full-refresh", is_flag=True, help="Re-read every landing file, changed or not.")
@click.option("--checksum", is_flag=True, help="Hash every file instead of trusting unchanged size and mtime.")
@click.option("--encoding", default=None, help="Encoding of the landing files (default: vars.ingest.encoding).")
@click.option(
    "--allow-source-removal",
    is_flag=True,
    help="Allow a run in which every file of a source is gone (deletes all of its rows).",
)
@JSON_OPTION
def ingest(full_refresh: bool, checksum: bool, encoding: str | None, allow_source_removal: bool, as_json: bool) -> None:
    """Land new and changed files from the landing zone into the raw schema.

    Example: rp ingest --json
    """
    from python_jobs.land.ingest import ingest as run_ingest

    config = settings()
    summary = run_job(
        lambda: run_ingest(
            config,
            full_refresh=full_refresh,
            checksum=checksum,
            encoding=encoding,
            allow_source_removal=allow_source_removal,
            quiet=as_json,
        )
    )
    emit(summary, as_json)


# --- transform (dbt) ----------------------------------------------------------------------------


def _dbt(args: list[str]) -> None:
    from python_jobs.transform.dbt import run_dbt

    config = settings()
    code = run_job(lambda: run_dbt(config, args).exit_code)
    sys.exit(128 - code if code < 0 else code)  # dbt killed by signal N: exit 128 + N, as a shell reports it


@cli.command(context_settings=DBT_PASSTHROUGH)
@click.pass_context
def build(ctx: click.Context) -> None:
    """dbt build (seeds, models, tests), results recorded in the ops tables; other arguments go to dbt.

    Example: rp build --select +document_chunks
    """
    _dbt(["build", *ctx.args])


@cli.command(context_settings=DBT_PASSTHROUGH)
@click.pass_context
def freshness(ctx: click.Context) -> None:
    """dbt source freshness against the SLAs in the sources' YAML; other arguments go to dbt.

    Example: rp freshness --select source:shop
    """
    _dbt(["source", "freshness", *ctx.args])


@cli.command(context_settings=DBT_PASSTHROUGH)
@click.pass_context
def dbt(ctx: click.Context) -> None:
    """Any dbt command, against the jobs' warehouse, with a held lock reported in one line.

    Example: rp dbt show --inline "select count(*) from knowledge.document_chunks"
    """
    _dbt(list(ctx.args))


# --- index ------------------------------------------------------------------------------------


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print the plan (counts, tokens, estimated cost) and change nothing.")
@click.option("--force", is_flag=True, help="Index even when the latest dbt build failed tests on the chunks.")
@click.option("--max-tokens", type=click.IntRange(min=0), help="Token budget of this run (default: vars.embedding).")
@click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=0.0, help="Queue up to N s behind a run.")
@click.option(
    "--allow-mass-delete", is_flag=True, help="Shrink the index by more than vars.embedding.max_delete_share."
)
@PROGRESS_OPTION
@JSON_OPTION
def embed(
    dry_run: bool,
    force: bool,
    max_tokens: int | None,
    wait_seconds: float,
    allow_mass_delete: bool,
    progress,
    as_json: bool,
) -> None:
    """Embed new and changed chunks of document_chunks into the LanceDB index, then publish.

    Example: rp embed --dry-run
    """
    from python_jobs.index.embed import EmbedOptions
    from python_jobs.index.embed import embed as run_embed

    config = settings()
    options = EmbedOptions(
        dry_run=dry_run,
        force=force,
        max_tokens=max_tokens,
        wait_seconds=wait_seconds,
        allow_mass_delete=allow_mass_delete,
        progress=progress,
    )
    emit(run_job(lambda: run_embed(config, options)), as_json)


@cli.command()
@click.option("--repair", "do_repair", is_flag=True, help="Fix what is found by running the embedding job.")
@click.option("--force", is_flag=True, help="With --repair: index even when the quality gate fails.")
@JSON_OPTION
def verify(do_repair: bool, force: bool, as_json: bool) -> None:
    """Compare the published index with document_chunks; exit 1 when they disagree.

    Example: rp verify --repair
    """
    from python_jobs.index.embed import EmbedOptions
    from python_jobs.index.verify import repair
    from python_jobs.index.verify import verify as run_verify

    config = settings()
    if do_repair:
        repaired = run_job(lambda: repair(config, EmbedOptions(force=force)))
        if not as_json:
            click.echo(repaired.to_text())
    report = run_job(lambda: run_verify(config))
    emit(report, as_json)
    sys.exit(0 if report.healthy else 1)


# --- search -----------------------------------------------------------------------------------


@cli.command()
@click.argument("question")
@click.option("--mode", type=click.Choice(EvalSettings.MODES), default="hybrid", show_default=True)
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--access-level",
    type=click.Choice(ACCESS_LEVELS),
    default=ACCESS_LEVELS[0],
    show_default=True,
    help="The caller's clearance: results come from this level and the ones below it.",
)
@click.option("--doc-type", multiple=True, help="Only these document types (repeatable).")
@click.option("--sku", "product_sku", multiple=True, help="Only documents about these products (repeatable).")
@click.option("--category", multiple=True, help="Only these product categories (repeatable).")
@click.option("--updated-from", help="Only documents updated at or after this date (YYYY-MM-DD, UTC).")
@click.option("--updated-to", help="Only documents updated before this date (YYYY-MM-DD, UTC).")
@click.option("--documents", "per_document", is_flag=True, help="The best chunk of each document only.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def query(
    question, mode, k, access_level, doc_type, product_sku, category, updated_from, updated_to, per_document, as_json
) -> None:
    """Search the published index for QUESTION: vector, full-text or hybrid, with filters.

    Example: rp query "how do I descale the kettle" --mode hybrid -k 5
    """
    from python_jobs.search.filters import Filters, access_levels_up_to
    from python_jobs.search.retriever import Retriever

    config = settings()

    def search():
        filters = Filters.of(doc_type, product_sku, category, None, updated_from, updated_to)
        return Retriever(config).search(question, mode, k, filters, access_levels_up_to(access_level), per_document)

    emit(run_job(search), as_json)


# --- serve ------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", help="Address to bind (default: vars.serve.host, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port to listen on (default: vars.serve.port); 0 picks one."
)
@click.option("--access-log", is_flag=True, help="Log every request line (the query log records them anyway).")
def serve(host: str | None, port: int | None, access_log: bool) -> None:
    """Serve /v1/search, /v1/context and /v1/feedback over HTTP until stopped (see docs/serving.md).

    Needs a published index (`make embed`) and a key (`rp keys create`); never opens the warehouse.

    Example: rp serve --host 127.0.0.1 --port 8000
    """
    from python_jobs.serve.server import serve as run_server

    config = settings()
    run_job(
        lambda: run_server(config, host or config.serve.host, config.serve.port if port is None else port, access_log)
    )


@cli.group()
def keys() -> None:
    """API keys of the service: create (the key is printed once), list, revoke. Only hashes are stored.

    Example: rp keys create --name support-bot --access-level internal --rate 10/s
    """


@keys.command(name="create")
@click.option("--name", required=True, help="Who the key is for; it names the caller in the query log.")
@click.option(
    "--access-level",
    type=click.Choice(ACCESS_LEVELS),
    required=True,
    help="The highest level the key may read; requests cannot raise it.",
)
@click.option("--rate", help="Requests allowed, as N/s, N/min or N/hour (default: vars.serve.default_rate_per_second).")
@click.option(
    "--daily-tokens",
    type=click.IntRange(min=1),
    help="Context tokens per UTC day (default: vars.serve.default_daily_tokens).",
)
@JSON_OPTION
def keys_create(name: str, access_level: str, rate: str | None, daily_tokens: int | None, as_json: bool) -> None:
    """Create a key and print it once (the last line); only its SHA-256 is stored.

    Example: rp keys create --name support-bot --access-level internal --rate 10/s --daily-tokens 200000
    """
    from python_jobs.serve.keys import create_key, parse_rate

    config = settings()
    emit(
        run_job(
            lambda: create_key(
                config.keys_path, name, access_level, parse_rate(rate) if rate is not None else None, daily_tokens
            )
        ),
        as_json,
    )


@keys.command(name="list")
@JSON_OPTION
def keys_list(as_json: bool) -> None:
    """List the keys (name, prefix, level, limits, created, revoked); never the keys themselves.

    Example: rp keys list
    """
    from python_jobs.serve.keys import list_keys

    config = settings()
    emit(run_job(lambda: list_keys(config.keys_path)), as_json)


@keys.command(name="revoke")
@click.argument("name")
@JSON_OPTION
def keys_revoke(name: str, as_json: bool) -> None:
    """Revoke the active key NAME; a running service refuses it within vars.serve.keys_poll_seconds.

    Example: rp keys revoke support-bot
    """
    from python_jobs.serve.keys import revoke_key

    config = settings()
    emit(run_job(lambda: revoke_key(config.keys_path, name)), as_json)


# --- evaluate ---------------------------------------------------------------------------------


# A group that still evaluates when called bare (`rp eval`, `make eval`), with subcommands beside it.
@cli.group(name="eval", invoke_without_command=True)
@click.option("--mode", "modes", multiple=True, type=click.Choice(EvalSettings.MODES), help="Only these modes.")
@click.option("--questions", type=click.Path(path_type=Path, dir_okay=False), help="Questions CSV (seed layout).")
@click.option("--judgments", type=click.Path(path_type=Path, dir_okay=False), help="Judgments CSV (seed layout).")
@click.option("--no-gates", is_flag=True, help="Measure only: no thresholds or regression checks.")
@PROGRESS_OPTION
@JSON_OPTION
@click.pass_context
def evaluate(
    ctx: click.Context, modes, questions: Path | None, judgments: Path | None, no_gates: bool, progress, as_json: bool
) -> None:
    """Evaluate retrieval on the seeded questions and the judgments promoted from feedback (or
    --questions/--judgments); exit 6 when a gate fails.

    Example: rp eval --mode hybrid
    """
    if ctx.invoked_subcommand is not None:
        return
    from python_jobs.evaluate import datasets
    from python_jobs.evaluate.run import EvalOptions, run_eval

    config = settings()
    if bool(questions) != bool(judgments):
        raise click.UsageError("--questions and --judgments go together")

    def job():
        evaluation = datasets.from_csv(questions, judgments) if questions else None
        options = EvalOptions(modes=tuple(modes) or None, gates=not no_gates, progress=progress)
        return run_eval(config, evaluation, options)

    summary = run_job(job)
    emit(summary, as_json)
    if not summary.passed:
        click.secho(
            f"error: {len(summary.gate_failures)} evaluation gate(s) failed: "
            + "; ".join(f.describe() for f in summary.gate_failures),
            fg="red",
            err=True,
        )
        sys.exit(ExitCode.EVAL_GATE)


@evaluate.command(name="promote-feedback")
@click.option(
    "--min-votes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Votes for (requests labelling the document relevant) a candidate needs.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be promoted and write nothing.")
@click.option("--refresh/--no-refresh", default=True, help="Rebuild the candidates from the query log first.")
@JSON_OPTION
def promote_feedback(min_votes: int, dry_run: bool, refresh: bool, as_json: bool) -> None:
    """Promote voted feedback to eval judgments.

    Appends the candidates of eval_feedback_candidates with at least --min-votes votes for to
    vars.eval.feedback_judgments_path with their provenance; the next `rp eval` asks them too.

    Example: rp eval promote-feedback --min-votes 3 --dry-run
    """
    from python_jobs.evaluate.feedback import promote_feedback as run_promote

    config = settings()
    emit(run_job(lambda: run_promote(config, min_votes, dry_run, refresh)), as_json)


@cli.command(name="eval-beir")
@click.argument("data", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False), help="Default: data/beir/<name>.")
@click.option("--split", default="test", show_default=True, help="Which qrels/<split>.tsv to evaluate.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(EvalSettings.MODES), help="Only these modes.")
@click.option("--vars", "vars_yaml", help="YAML vars for this dataset's pipeline (dbt --vars and the jobs).")
@click.option(
    "--first-chunk-only",
    is_flag=True,
    help="Rank each document by its first chunk only, as models that truncate documents (MTEB) see them.",
)
@click.option(
    "--pii",
    type=click.Choice(["redact", "block", "allow"]),
    default="redact",
    show_default=True,
    help="Personal data in the corpus: replace it with [EMAIL], [PHONE], [CARD]; fail the build; or keep it. "
    "A retrieval.pii_policy in --vars takes precedence.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@JSON_OPTION
def eval_beir(
    data: Path, workspace: Path | None, split: str, modes, vars_yaml, first_chunk_only, pii, progress, as_json
):
    """Land a BEIR dataset (DATA: corpus.jsonl, queries.jsonl, qrels/) through the pipeline and score it.

    Example: rp eval-beir ../shared/benchmarks/nfcorpus
    """
    from python_jobs.evaluate.beir import eval_beir as run_beir

    modes = tuple(modes) or EvalSettings.MODES
    emit(run_job(lambda: run_beir(data, workspace, split, modes, vars_yaml, progress, first_chunk_only, pii)), as_json)


# --- observe ----------------------------------------------------------------------------------


@cli.command()
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Where to write the page.")
@click.option("--refresh/--no-refresh", default=True, help="Rebuild the ops marts first (default: yes).")
@JSON_OPTION
def report(out: Path | None, refresh: bool, as_json: bool) -> None:
    """Write the ops dashboard: freshness, quality, tests, volume and cost, failures first.

    Example: rp report --out /tmp/ops.html --no-refresh
    """
    from python_jobs.observe.report import build_report

    config = settings()
    summary = run_job(lambda: build_report(config, out, refresh))
    emit(summary, as_json)
    if summary.refresh_exit_code not in (None, 0):
        sys.exit(summary.refresh_exit_code)


@cli.command()
@click.argument("sql")
@click.option("--limit", default=200, show_default=True, help="Most rows to print.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON objects.")
def sql(sql: str, limit: int, as_json: bool) -> None:
    """Run one read-only SQL query against the warehouse and print the rows.

    Example: rp sql "select * from observability.ops_node_status where is_failure"
    """
    from python_jobs.observe.sql import query as run_query

    config = settings()
    emit(run_job(lambda: run_query(config, sql, limit)), as_json)


# --- the whole pipeline -----------------------------------------------------------------------


@cli.command()
@click.option("--full-refresh", is_flag=True, help="Re-read every landing file (ingest --full-refresh).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary; step output goes to stderr.")
def pipeline(full_refresh: bool, as_json: bool) -> None:
    """Run ingest, build, freshness, embed, eval and report in order; stop and alert at the first failure.

    Example: rp pipeline --full-refresh
    """
    from python_jobs.pipeline import PipelineOptions, run_pipeline

    config = settings()
    options = PipelineOptions(full_refresh=full_refresh, output=sys.stderr if as_json else sys.stdout)
    summary = run_job(lambda: run_pipeline(config, options))
    emit(summary, as_json)
    sys.exit(summary.exit_code)


@cli.command()
@click.option("--once", is_flag=True, help="Run one cycle over whatever changed, then exit (for cron and tests).")
@PROGRESS_OPTION
@click.option("--json", "as_json", is_flag=True, help="A JSON object per line: each cycle, start and stop.")
def watch(once: bool, progress, as_json: bool) -> None:
    """Keep the index fresh: a cycle per burst of landing-zone changes (ingest, build what they affect,
    embed, publish); every change's freshness goes to ops.freshness_events (see docs/freshness.md).

    Runs until SIGTERM or Ctrl-C; one watcher per workspace (a second exits 75).

    Example: rp watch --json >> data/watch.log
    """
    from python_jobs.watch.watcher import WatchOptions
    from python_jobs.watch.watcher import watch as run_watch

    config = settings()
    options = WatchOptions(once=once, as_json=as_json, progress=progress, reload=Settings.load)
    summary = run_job(lambda: run_watch(config, options))
    if once or summary.stopped_by is not None:
        emit(summary, as_json)
    sys.exit(summary.exit_code)


# --- configuration and reference ----------------------------------------------------------------


@cli.command()
@JSON_OPTION
def config(as_json: bool) -> None:
    """Validate the settings (dbt_project.yml vars, RP_VARS, RP_* paths) and print them as the jobs see them.

    Example: RP_VARS='{embedding: {batch_size: 16}}' rp config
    """
    emit(ConfigSummary(settings()), as_json)


class ConfigSummary(Summary):
    """The merged vars and the resolved paths, as every job reads them."""

    def __init__(self, loaded: Settings):
        self.paths = {
            "landing_dir": loaded.landing_dir,
            "warehouse_path": loaded.warehouse_path,
            "index_dir": loaded.index_dir,
            "dbt_target_dir": loaded.dbt_target_dir,
            "report_path": loaded.report_path,
            "alerts_file": loaded.alerts.jsonl_path,
            "serve_log_dir": loaded.serve_log_dir,
            "keys_path": loaded.keys_path,
        }
        self.vars = loaded.vars

    def to_json(self) -> dict:
        return {"paths": {key: str(value) for key, value in self.paths.items()}, "vars": self.vars}

    def to_text(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_json(), sort_keys=False, allow_unicode=True).rstrip()


@cli.command(hidden=True)
@click.option("--check", is_flag=True, help="Exit 1 if a checked-in page differs from what the code generates.")
def reference(check: bool) -> None:
    """Write the generated pages docs/cli.md (this CLI), docs/configuration.md (the settings) and
    macros/pii_patterns.sql (python_jobs/chunk/pii.py's patterns, for the no_pii test).

    Example: rp reference --check
    """
    stale = write_reference(check=check)
    for page in stale:
        if check:
            click.echo(f"{page} is out of date: run `make docs-reference` and commit it", err=True)
        else:
            click.echo(f"wrote {page}")
    sys.exit(1 if check and stale else 0)


# --- the generated reference pages ------------------------------------------------------------

CLI_PAGE = "docs/cli.md"
CONFIGURATION_PAGE = "docs/configuration.md"


def cli_reference() -> str:
    """Every visible command of `rp`: its help text and options, as `rp COMMAND --help` prints them."""
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated from python_jobs/cli.py by `rp reference`; `make lint` checks it is current. -->",
        "",
        "Every step of the pipeline is a command of `rp` (also `python -m python_jobs`); the make targets call",
        "them. Each prints a summary, or one JSON document with `--json`. Exit codes: see the README.",
        "",
    ]
    # A fixed width: the page must not depend on the terminal it was generated in.
    context = click.Context(cli, info_name="rp", terminal_width=100, max_content_width=100)
    lines += ["```", cli.get_help(context), "```", ""]
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=context, terminal_width=100, max_content_width=100)
        lines += [f"## rp {name}", "", "```", command.get_help(sub), "```", ""]
        for sub_name in command.list_commands(sub) if isinstance(command, click.Group) else ():  # rp eval ...
            subcommand = command.get_command(sub, sub_name)
            if subcommand is None or subcommand.hidden:
                continue
            inner = click.Context(subcommand, info_name=sub_name, parent=sub, terminal_width=100, max_content_width=100)
            lines += [f"### rp {name} {sub_name}", "", "```", subcommand.get_help(inner), "```", ""]
    return "\n".join(lines)


def pages() -> dict[str, str]:
    from python_jobs.chunk.pii import PATTERNS_MACRO, pii_patterns_macro
    from python_jobs.common.settings import configuration_reference

    # The PII patterns are declared in Python once; the no_pii dbt test reads this generated macro.
    return {
        CLI_PAGE: cli_reference(),
        CONFIGURATION_PAGE: configuration_reference(),
        PATTERNS_MACRO: pii_patterns_macro(),
    }


def write_reference(check: bool = False, project_dir: Path = PROJECT_DIR) -> list[str]:
    """Write (or with `check`, only compare) the generated pages; the ones that were out of date."""
    stale = []
    for name, text in pages().items():
        path = project_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
            if not check:
                path.write_text(text, encoding="utf-8")
    return stale


def main() -> None:
    cli(prog_name="rp")


if __name__ == "__main__":
    main()
