"""The keys of the Python stages' assets (the dbt assets are keyed by their dbt names)."""

from __future__ import annotations

import dagster as dg

INDEX = dg.AssetKey("vector_index")  # the published LanceDB index (python_jobs/index/embed.py)
EVALUATION = dg.AssetKey("evaluation")  # the seeded questions, scored and gated (python_jobs/evaluate/run.py)
DASHBOARD = dg.AssetKey("dashboard")  # the ops dashboard (python_jobs/observe/report.py)
