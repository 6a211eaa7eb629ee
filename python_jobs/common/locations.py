"""Where the vector index lives: a local directory, or a prefix on S3-compatible object storage.

`vars.embedding.index_dir` (or `RP_INDEX_DIR`) is either a path (relative to the project
directory) or a URI such as `s3://bucket/prefix`. An `IndexLocation` is that choice, checked:
the URI LanceDB opens, the local directory when there is one, and the local scratch directory
for what never goes to object storage (staged Parquet rows, ONNX model exports, DuckDB spill).

On a local directory, scratch is the index directory itself, as it always was. On object
storage it is `<vars.embedding.scratch_dir>/<scheme>/<bucket>/<prefix>`, so two indexes never
share scratch (docs/object-storage.md).

Credentials never come from vars: they are read from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or a profile), by LanceDB and boto3 alike; vars
may carry the non-secret options (region, endpoint, allow_http, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from python_jobs.common.errors import ConfigError

# Object stores the index can live on. LanceDB reads more (gs://, az://), but the live pointer and the run
# lease are conditional writes (If-None-Match / If-Match) that this project makes through the S3 API.
SUPPORTED_SCHEMES = ("s3",)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# Words in an option name that make it a secret: those belong in the environment, never in vars (which dbt's
# docs, `rp config` and the logs show).
SECRET_WORDS = ("secret", "access_key", "key_id", "token", "password", "credential", "sas", "account_key", "private")


class IndexLocation:
    """The index's URI (what LanceDB opens), its local directory (None on object storage) and local scratch.

    `str()` is the URI. On a local directory it is also path-like (`os.fspath`, `/`), so code that only
    ever handles local indexes keeps working; on object storage those raise a ConfigError instead of
    silently writing beside the project.
    """

    __slots__ = ("path", "scratch", "storage_options", "uri")

    def __init__(
        self, uri: str, path: Path | None, scratch: Path, storage_options: Mapping[str, str] | None = None
    ) -> None:
        self.uri = uri
        self.path = path
        self.scratch = scratch
        self.storage_options = dict(storage_options or {})

    @classmethod
    def local(cls, directory: Path | str) -> IndexLocation:
        directory = Path(directory)
        return cls(str(directory), directory, directory)

    @property
    def is_remote(self) -> bool:
        return self.path is None

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme if self.is_remote else "file"

    @property
    def bucket(self) -> str:
        return urlsplit(self.uri).netloc

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket, without slashes at either end ('' for the bucket's root)."""
        return urlsplit(self.uri).path.strip("/")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"IndexLocation({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IndexLocation):
            return self.uri == other.uri
        if isinstance(other, Path) and self.path is not None:
            return self.path == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.uri)

    def _local_path(self) -> Path:
        if self.path is None:
            raise ConfigError(
                f"the index is on object storage ({self.uri}) and this step needs a local directory: "
                "set vars.embedding.index_dir (or RP_INDEX_DIR) to a path to use it"
            )
        return self.path

    def __fspath__(self) -> str:
        return str(self._local_path())

    def __truediv__(self, other: str | Path) -> Path:
        return self._local_path() / other


def parse_index_location(
    value: str | Path,
    project_dir: Path,
    scratch_root: str | Path,
    storage_options: Mapping[str, str] | None = None,
    setting: str = "vars.embedding.index_dir",
) -> IndexLocation:
    """`value` as an IndexLocation: a path (relative to `project_dir`), `file://` + an absolute path, or an
    object-store URI of a supported scheme. Raises ConfigError naming `setting` when it is none of those."""
    text = str(value).strip()
    problem = index_uri_problem(text)
    if problem:
        raise ConfigError(f"{setting} {problem}")
    parts = urlsplit(text)
    if parts.scheme in ("", "file") or "://" not in text:
        path = Path(parts.path if parts.scheme == "file" else text).expanduser()
        directory = path if path.is_absolute() else project_dir / path
        return IndexLocation(str(directory), directory, directory)
    root = Path(scratch_root).expanduser()
    root = root if root.is_absolute() else project_dir / root
    prefix = parts.path.strip("/")
    scratch = root / parts.scheme / parts.netloc / (prefix or "_root")
    return IndexLocation(f"{parts.scheme}://{parts.netloc}/{prefix}".rstrip("/"), None, scratch, storage_options)


def index_uri_problem(text: str) -> str | None:
    """What is wrong with an index location (completing '<setting> ...'), or None when it is usable."""
    if not text:
        return "must not be empty"
    if "://" not in text:
        return None  # a path
    parts = urlsplit(text)
    scheme = parts.scheme  # urlsplit lower-cases it
    if scheme == "file":
        absolute = parts.path.startswith("/") and not parts.netloc
        return None if absolute else f"must be file:///absolute/path, got {text!r}"
    if scheme not in SUPPORTED_SCHEMES:
        return (
            f"uses {scheme}://, which is not supported, got {text!r}: use a local directory or s3://bucket/prefix "
            "(S3 or an S3-compatible store such as MinIO, Ceph or Cloudflare R2; GCS through its S3 interoperability "
            "endpoint; see docs/object-storage.md)"
        )
    if not _BUCKET.match(parts.netloc or ""):
        return f"must name a bucket (3-63 lower-case letters, digits, dots, dashes): s3://bucket/prefix, got {text!r}"
    if parts.query or parts.fragment:
        return f"must be s3://bucket/prefix without ?query or #fragment, got {text!r}"
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return f"must not hold . or .. in its prefix, got {text!r}"
    return None


class FrozenOptions(dict):
    """Storage options that can be hashed like the rest of the frozen settings (the model loaders cache on them).
    Never changed after the settings are checked."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def secret_option(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def redacted(options: Mapping[str, str]) -> dict[str, str]:
    """Options safe to print: secrets (which only the environment may supply) shown as ***."""
    return {key: "***" if secret_option(key) else value for key, value in options.items()}
