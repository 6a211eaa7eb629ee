"""The pipeline on Dagster: one code location (definitions.py) whose assets are the dbt models and the
Python stages, whose checks are the dbt tests, the index's and the evaluation's gates and the SLAs,
with a landing-zone sensor, a daily schedule and failure alerts. A thin shell over the library
functions the `rp` commands call; see docs/orchestration.md. `make dagster` opens it."""
