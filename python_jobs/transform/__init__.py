"""Stage 3, transform: running dbt against the jobs' warehouse (dbt.py) and recording what it did in
the ops tables (results.py). See docs/observability.md."""
