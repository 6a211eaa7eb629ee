"""S3-compatible object storage for the warehouse's DuckDB connection: a dbt-duckdb plugin.

DuckDB reads and writes `s3://` through its httpfs extension, which cannot be installed here (no
network at run time, and the PyPI build of it is for DuckDB 1.5, which DuckDB 2.0 refuses to load).
DuckDB also accepts any fsspec filesystem (`register_filesystem`), so this plugin registers
pyarrow's own S3 client (`pyarrow.fs.S3FileSystem`, wrapped for fsspec by `ArrowFSWrapper`) under the
`s3://` scheme on every connection dbt opens. With it, dbt-duckdb's `external` materialization writes
a model as Parquet to `external_root` (an `s3://bucket/prefix`) and reads it back through a view, and
the Python models read those views like any table. No extension and no extra package: pyarrow is
already in the stack. dbt-duckdb's own `filesystems: [{fs: s3}]` would need `s3fs`, whose
aiobotocore pins a botocore older than the one boto3 (the index's object store) needs.

profiles.yml (the `s3` target):

    plugins:
      - module: python_jobs.transform.s3_filesystem
        config:
          endpoint_url: "{{ env_var('AWS_ENDPOINT_URL', '') }}"   # empty: AWS itself
          region: "{{ env_var('AWS_REGION', 'us-east-1') }}"

Credentials come from the standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an
instance role), as for any AWS client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from dbt.adapters.duckdb.plugins import BasePlugin
from dbt_common.exceptions import DbtRuntimeError
from fsspec.implementations.arrow import ArrowFSWrapper

from python_jobs.common.errors import ConfigError

SCHEMES = ("s3", "s3a")
OPTIONS = {"endpoint_url", "region", "connect_timeout", "request_timeout"}


class S3ArrowFileSystem(ArrowFSWrapper):
    """pyarrow's S3 filesystem as an fsspec filesystem for the `s3://` scheme (what DuckDB routes by)."""

    protocol = SCHEMES
    root_marker = ""


def s3_filesystem(config: dict[str, Any]) -> S3ArrowFileSystem:
    """An fsspec S3 filesystem from the plugin's config: endpoint_url (empty for AWS), region,
    and timeouts in seconds. Raises ConfigError naming a bad key or value."""
    import pyarrow.fs as pafs

    unknown = sorted(set(config) - OPTIONS)
    if unknown:
        known = ", ".join(sorted(OPTIONS))
        raise ConfigError(f"profiles.yml: the s3_filesystem plugin does not know {', '.join(unknown)} (known: {known})")
    options: dict[str, Any] = {}
    endpoint = str(config.get("endpoint_url") or "").strip()
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"profiles.yml: s3_filesystem endpoint_url must be http(s)://host[:port], got {endpoint!r} "
                "(from AWS_ENDPOINT_URL)"
            )
        options |= {"endpoint_override": parts.netloc, "scheme": parts.scheme}
    if config.get("region"):
        options["region"] = str(config["region"])
    for key in ("connect_timeout", "request_timeout"):
        if config.get(key) not in (None, ""):
            options[key] = float(config[key])
    return S3ArrowFileSystem(pafs.S3FileSystem(**options))


class Plugin(BasePlugin):
    """Registers the S3 filesystem on each DuckDB connection dbt-duckdb opens."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        try:
            self.filesystem = s3_filesystem(plugin_config)
        except ConfigError as exc:  # dbt prints its own errors as one message, anything else as a traceback
            raise DbtRuntimeError(str(exc)) from None

    def configure_connection(self, conn) -> None:
        if not conn.filesystem_is_registered(SCHEMES[0]):
            conn.register_filesystem(self.filesystem)
