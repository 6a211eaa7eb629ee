"""The watch mode: `rp watch` keeps the index fresh, a cycle per burst of landing-zone changes.

watcher.py  the long-running process: file events, debounce, signals, the workspace lock
cycle.py    one cycle: ingest, the affected dbt build in this process, embed, publish, freshness records

The library pieces it calls are the batch path's: the ingest job, `plan_build` (python_jobs/transform/
build_state.py), the embedding job and the freshness tracker (python_jobs/land/freshness.py).
"""
