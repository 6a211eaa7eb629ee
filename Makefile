# Retrieval Platform: every step of the pipeline is a target. `make help` lists them.
#
# Point any target at another landing zone or warehouse:
#   make ingest build LANDING=data/generated/scale-1000 WAREHOUSE=data/warehouse/scale-1000.duckdb

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

SCALE ?= 1000
ARGS ?=
PYTEST_ARGS ?=

export DBT_PROFILES_DIR := $(CURDIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
ifdef LANDING
export RP_LANDING_DIR := $(abspath $(LANDING))
endif
ifdef WAREHOUSE
export RP_DUCKDB_PATH := $(abspath $(WAREHOUSE))
endif
ifdef INDEX
# A path is made absolute; a URI (s3://bucket/prefix: docs/object-storage.md) is passed through as it is.
export RP_INDEX_DIR := $(if $(findstring ://,$(INDEX)),$(INDEX),$(abspath $(INDEX)))
endif
# The profiles.yml target dbt builds: dev (the DuckDB file), s3 (marts as Parquet on object storage),
# motherduck; docs/warehouses.md.
ifdef TARGET
export DBT_TARGET := $(TARGET)
endif

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Every step is a command of the `rp` CLI (python_jobs/cli.py); dbt goes through `rp dbt`, which turns
# a held warehouse lock into one clear message and records the results in the ops tables.
RP := $(BIN)/rp
DBT := $(RP) dbt

.PHONY: help setup setup-browser data ingest build chunks freshness embed verify query eval eval-beir report pipeline dagster sql docs docs-generate docs-reference demo bench bench-warehouse bench-chunking bench-embed bench-report bench-edits bench-scale bench-model serve bench-serve watch bench-freshness test lint format clean distclean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the pinned stack (idempotent)

# Debian's chromium, for the dashboard's browser test (playwright drives it; no browser download).
setup-browser: ## Install Debian's chromium for the browser test (apt; needs root or sudo)
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@chromium --version

data: $(STAMP) ## Generate a synthetic landing zone: make data SCALE=100000 [ARGS="--mutate 0.01"]
	$(BIN)/python bench/generate_data.py --scale $(SCALE) --out data/generated/scale-$(SCALE) $(ARGS)

ingest: $(STAMP) ## Land new and changed files into the raw schema
	$(RP) ingest $(ARGS)

build: $(STAMP) ## dbt build: seeds, models and tests
	$(RP) build $(ARGS)

chunks: $(STAMP) ## Build and test only documents and document_chunks (and what they need)
	$(RP) build --select +document_chunks+ $(ARGS)

freshness: $(STAMP) ## Check source freshness against the SLAs
	$(RP) freshness $(ARGS)

embed: $(STAMP) ## Embed new and changed chunks into the LanceDB index: ARGS="--dry-run", "--json", "--max-tokens N"
	$(RP) embed $(ARGS)

verify: $(STAMP) ## Compare the index with document_chunks; ARGS=--repair fixes what it finds
	$(RP) verify $(ARGS)

query: $(STAMP) ## Search the index: make query Q="how do I descale the kettle" [ARGS="--mode fts -k 10 --access-level internal"]
	@test -n "$$Q" || { echo 'usage: make query Q="your question" [ARGS="--mode hybrid|vector|fts ..."]' >&2; exit 2; }
	$(RP) query "$$Q" $(ARGS)

eval: $(STAMP) ## Evaluate retrieval on the seeded questions; fails when a gate in vars.eval fails
	$(RP) eval $(ARGS)

eval-beir: $(STAMP) ## A BEIR dataset end to end in its own workspace: make eval-beir DATA=../shared/benchmarks/nfcorpus
	@test -n "$$DATA" || { echo 'usage: make eval-beir DATA=path/to/beir/dataset' >&2; exit 2; }
	$(RP) eval-beir "$$DATA" $(ARGS)

report: $(STAMP) ## Refresh the ops marts and write the HTML dashboard (vars.ops.report_path) [ARGS="--out path --no-refresh --json"]
	$(RP) report $(ARGS)

sql: $(STAMP) ## One read-only query against the warehouse: make sql Q="select * from observability.ops_node_status where is_failure"
	@test -n "$$Q" || { echo 'usage: make sql Q="select ..."' >&2; exit 2; }
	$(RP) sql "$$Q" $(ARGS)

pipeline: $(STAMP) ## ingest, build, freshness, embed, eval, report: stops and alerts at the first failure [ARGS=--full-refresh]
	$(RP) pipeline $(ARGS)

# Dagster's run history, schedules and sensor cursors live in DAGSTER_HOME (SQLite), beside the warehouse.
DAGSTER_HOME_DIR := data/dagster
DAGSTER_PORT ?= 3000

dagster: $(STAMP) ## The pipeline on Dagster: assets, checks, sensors, schedule; UI on http://127.0.0.1:3000 [DAGSTER_PORT=3000]
	@mkdir -p $(DAGSTER_HOME_DIR)
	@test -f $(DAGSTER_HOME_DIR)/dagster.yaml || cp python_jobs/orchestrate/dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(abspath $(DAGSTER_HOME_DIR)) $(BIN)/dagster dev -m python_jobs.orchestrate.definitions -h 127.0.0.1 -p $(DAGSTER_PORT)

serve: $(STAMP) ## Serve search, context and feedback over HTTP on 127.0.0.1 (needs a key: rp keys create) [ARGS="--port 8000"]
	$(RP) serve $(ARGS)

docs-generate: $(STAMP)
	$(DBT) docs generate

docs: docs-generate ## Generate and serve the dbt docs with the lineage graph (offline)
	$(BIN)/dbt docs serve --port 8080 --no-browser

demo: $(STAMP) ## Run the whole pipeline on the shipped sample data
	# The demo replays the sample delivery, so freshness reflects this run, not the clone date.
	# ingest, build, freshness, embed, eval and the dashboard, stopping at the first failure.
	$(RP) pipeline --full-refresh
	$(DBT) show --quiet --limit 10 --inline "$$(cat analyses/chunk_summary.sql)"
	@echo "Demo complete: warehouse at $${RP_DUCKDB_PATH:-data/warehouse/retrieval.duckdb}, index at $${RP_INDEX_DIR:-data/index}; 'make docs' shows the lineage."
	@echo "Dashboard: $$($(RP) config --json | $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["paths"]["report_path"])')"

bench: bench-warehouse bench-chunking bench-embed bench-report ## All benchmarks on generated data, figures printed: make bench SCALE=100000

bench-warehouse: $(STAMP) ## Ingest and dbt build at SCALE documents
	$(BIN)/python bench/bench_warehouse.py --scale $(SCALE) $(ARGS)

bench-chunking: $(STAMP) ## Chunking throughput and edit locality at SCALE documents
	$(BIN)/python bench/bench_chunking.py --scale $(SCALE) $(ARGS)

bench-embed: $(STAMP) ## Embedding: model path (real model) and index mechanics at SCALE documents
	$(BIN)/python bench/bench_embed.py --scale $(SCALE) $(ARGS)

bench-report: $(STAMP) ## make report (ops marts refresh + dashboard) at SCALE documents, stand-in index
	$(BIN)/python bench/bench_report.py --scale $(SCALE) $(ARGS)

bench-edits: $(STAMP) ## The edit workload (500 NFCorpus documents, real model): texts embedded and rows written per change [ARGS="--docs 100"]
	$(BIN)/python bench/bench_edits.py $(ARGS)

bench-model: $(STAMP) ## Model backends on NFCorpus (texts/s, cosine, nDCG@10: torch, onnx, int8) and ANN build time + recall [ARGS="--ann-rows 100000,1000000"]
	$(BIN)/python bench/bench_model.py $(ARGS)

bench-scale: $(STAMP) ## Scale-out: local vs Ray executors (real model, 2,000 texts); the committer at 1 M chunks, local dir and S3
	$(BIN)/python bench/bench_scale.py $(ARGS)

bench-serve: $(STAMP) ## Load-test the service on 127.0.0.1: the sample index and a 100,000-chunk one [ARGS="--duration 5"]
	$(BIN)/python bench/bench_serve.py $(ARGS)

watch: $(STAMP) ## Keep the index fresh: a cycle per burst of landing-zone changes, until stopped [ARGS="--json", "--once"]
	$(RP) watch $(ARGS)

bench-freshness: $(STAMP) ## Edit to searchable with rp watch and rp serve: single edits, bursts, no-op cycles, 100,000 chunks
	$(BIN)/python bench/bench_freshness.py $(ARGS)

test: $(STAMP) ## Run the full test suite on both cores (PYTEST_ARGS="-k embed" to narrow it)
	$(BIN)/pytest -n 2 --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, sqlfluff (dbt SQL), import-linter (stage order), the generated reference pages, dbt parse on Postgres
	$(BIN)/ruff check python_jobs bench tests
	$(BIN)/ruff format --check python_jobs bench tests
	$(BIN)/sqlfluff lint models
	$(BIN)/lint-imports --no-cache
	$(RP) reference --check
	# The project must parse for a second adapter (no server needed): docs/warehouses.md.
	$(BIN)/dbt parse --quiet --target postgres --target-path target/parse-postgres --log-path target/parse-postgres

docs-reference: $(STAMP) ## Regenerate docs/cli.md and docs/configuration.md from the code
	$(RP) reference

format: $(STAMP) ## Apply ruff and sqlfluff fixes
	$(BIN)/ruff check --fix python_jobs bench tests
	$(BIN)/ruff format python_jobs bench tests
	$(BIN)/sqlfluff fix models

clean: ## Remove build outputs, warehouses and generated data (keeps .venv)
	rm -rf target logs dbt_packages data/warehouse data/index data/index_scratch data/generated data/dagster .pytest_cache .ruff_cache

distclean: clean ## Also remove .venv
	rm -rf $(VENV)
