"""The retrieval service: search and context over HTTP, for applications (`rp serve`, docs/serving.md).

A thin shell over the same library the CLI calls (python_jobs.search): the published LanceDB index,
opened once and swapped without a restart when a new version is published; callers authenticated by
keys whose access level bounds what they can read; every request logged off the hot path to Parquet
files that dbt reads. The service never opens the DuckDB warehouse.
"""
