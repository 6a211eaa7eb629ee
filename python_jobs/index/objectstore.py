"""The few objects of the index that are not Lance tables: the live pointer, the run lock, and the checks
verify makes on data files, on a local directory or on S3-compatible object storage.

Lance commits its own tables safely on both (on S3 with conditional puts: a manifest is written with
`If-None-Match: *`, and a writer that loses the race retries). What this module adds must be as safe:

- The live pointer (live.json) is replaced atomically. Locally: written beside it and renamed over it
  (os.replace). On S3 there is no rename, and a plain PUT would let two publishers overwrite each other,
  so it is a conditional PUT: `If-Match: <etag read before publishing>`, or `If-None-Match: *` for the
  first publish. A publisher that lost the race gets an error and publishes nothing.
- The run lock. Locally: `flock` on .embed.lock (python_jobs.common.locks). On S3: a lease object
  (.embed.lease.json) created with `If-None-Match: *`, holding the holder's pid, host, start time and
  time to live, renewed (`If-Match` on its own etag) while the run lives and deleted when it ends. A
  lease is taken over (again with `If-Match`, so only one taker wins) when it has expired by the
  server's clock, or at once when its holder ran on this machine and that process is gone (kill -9).

boto3, not pyarrow.fs: pyarrow's S3FileSystem cannot send If-Match / If-None-Match, and those two
headers are the whole point; boto3 also arrives with moto, the local S3 server the tests use.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from python_jobs.common.errors import PipelineError
from python_jobs.common.locations import IndexLocation
from python_jobs.common.locks import held

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # a lease not renewed for this long (by the server's clock) may be taken over
RENEW_EVERY = LEASE_SECONDS / 4
WAIT_POLL_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0
ATTEMPTS = 3


@dataclass(frozen=True)
class Stored:
    """An object's bytes and the token a conditional write compares against (the S3 etag; None locally)."""

    data: bytes
    etag: str | None = None


class StorageError(PipelineError):
    """The object store cannot be reached, refuses the credentials, or has no such bucket."""


class PointerConflictError(PipelineError):
    """live.json changed between this run reading it and publishing: another process published."""


class LeaseLostError(PipelineError):
    """This run's lease expired and another run took the index over: this run must not publish."""


# --- a local directory ---------------------------------------------------------------------------


class LocalFiles:
    """The index's own files in its local directory, as they always were."""

    def __init__(self, directory: Path):
        self.directory = directory

    def describe(self, name: str) -> str:
        return str(self.directory / name)

    def read(self, name: str) -> Stored | None:
        try:
            return Stored((self.directory / name).read_bytes())
        except FileNotFoundError:
            return None

    def replace(self, name: str, data: bytes, expected: Stored | None) -> None:
        """Atomically: written beside the file, flushed, renamed over it. The run lock keeps writers apart."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / name
        temporary = target.with_suffix(f".tmp{os.getpid()}")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def set_aside(self, name: str, new_name: str) -> str:
        (self.directory / name).rename(self.directory / new_name)
        return self.describe(new_name)

    def has_folder(self, name: str) -> bool:
        return (self.directory / name).is_dir()

    def remove_folder(self, name: str) -> None:
        import shutil

        shutil.rmtree(self.directory / name, ignore_errors=True)

    def truncated(self, folder: str, suffix: str, magic: bytes) -> list[str]:
        """Files in `folder` ending in `suffix` whose last bytes are not `magic` (cut short or overwritten)."""
        cut = []
        for path in sorted((self.directory / folder).glob(f"*{suffix}")):
            try:
                with path.open("rb") as handle:
                    handle.seek(max(path.stat().st_size - len(magic), 0))
                    if handle.read() != magic:
                        cut.append(str(path))
            except OSError:
                cut.append(str(path))
        return cut

    def lock(self, name: str, busy: Callable[[str], Exception], wait_seconds: float) -> Any:
        return held(self.directory / name, busy, wait_seconds=wait_seconds)


# --- S3 and S3-compatible object storage -----------------------------------------------------------


def _option(options: dict[str, str], *names: str) -> str | None:
    lowered = {key.lower(): value for key, value in options.items()}
    for name in names:
        if lowered.get(name):
            return lowered[name]
    return None


def _seconds(text: str | None, default: float) -> float:
    """'5s', '500ms', '2m' or a plain number of seconds (object_store's duration spellings)."""
    if not text:
        return default
    text = text.strip().lower()
    for unit, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit):
            with contextlib.suppress(ValueError):
                return float(text[: -len(unit)]) * factor
    try:
        return float(text)
    except ValueError:
        return default


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str | None, path_style: bool, connect: float, read: float, env_key: tuple):
    """One boto3 client per endpoint and set of credentials in the environment (clients are thread-safe and
    slow to make: ~50 ms). `env_key` is in the cache key so a changed environment makes a new client."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect,
        read_timeout=read,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path" if path_style else "virtual"},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


_CREDENTIAL_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


class S3Objects:
    """The index's own objects under its prefix in an S3 bucket (boto3)."""

    def __init__(self, location: IndexLocation):
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        options = location.storage_options
        self.endpoint = _option(options, "endpoint", "aws_endpoint", "endpoint_url", "aws_endpoint_url") or (
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        )
        self.region = _option(options, "region", "aws_region") or (
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        )
        virtual = _option(options, "virtual_hosted_style_request", "aws_virtual_hosted_style_request") or (
            os.environ.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "")
        )
        # object_store (LanceDB's S3 client) uses path-style requests unless told otherwise: the same here.
        self.path_style = virtual.strip().lower() not in ("1", "true", "yes")
        self.connect_timeout = _seconds(_option(options, "connect_timeout"), CONNECT_TIMEOUT_SECONDS)
        self.read_timeout = _seconds(_option(options, "timeout"), READ_TIMEOUT_SECONDS)

    @property
    def client(self):
        env_key = tuple(os.environ.get(name) for name in _CREDENTIAL_ENV)
        return _client(self.endpoint, self.region, self.path_style, self.connect_timeout, self.read_timeout, env_key)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    # --- reading and writing objects -------------------------------------------------------------

    def read(self, name: str) -> Stored | None:
        found = self.read_with_time(name)
        return None if found is None else found[0]

    def read_with_time(self, name: str) -> tuple[Stored, float] | None:
        """The object and how many seconds ago it was last written, by the server's clock (None: no object)."""
        with self._errors(f"reading {self.describe(name)}"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
            except self._client_error as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            data = answer["Body"].read()
            server_now = _server_time(answer)
            age = (server_now - answer["LastModified"]).total_seconds() if server_now else 0.0
            return Stored(data, answer["ETag"]), age

    def create(self, name: str, data: bytes) -> str | None:
        """Write the object if there is none (`If-None-Match: *`): its etag, or None when one exists."""
        return self._put(name, data, IfNoneMatch="*")

    def replace_if(self, name: str, data: bytes, etag: str) -> str | None:
        """Overwrite the object if it is still the version `etag` names: the new etag, or None when it changed."""
        return self._put(name, data, IfMatch=etag)

    def _put(self, name: str, data: bytes, **condition: str) -> str | None:
        with self._errors(f"writing {self.describe(name)}"):
            try:
                answer = self.client.put_object(
                    Bucket=self.bucket, Key=self.key(name), Body=data, ContentType="application/json", **condition
                )
            except self._client_error as exc:
                # 412: the condition failed; 409: a conditional write raced another one (S3 then asks to retry).
                if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                    return None
                raise
            return answer["ETag"]

    def replace(self, name: str, data: bytes, expected: Stored | None) -> None:
        """Publish `data` as `name` only if the object is still what was read (`expected`; None: absent)."""
        written = self.create(name, data) if expected is None else self.replace_if(name, data, expected.etag or "")
        if written is None:
            raise PointerConflictError(
                f"{self.describe(name)} changed after this run read it: another process published meanwhile, so "
                "this run did not publish. Run `make embed` again."
            )

    def delete_if(self, name: str, etag: str) -> None:
        """Delete the object if it is still the version `etag` names (a store without conditional deletes: if a
        read shows it is)."""
        with self._errors(f"deleting {self.describe(name)}"):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key(name), IfMatch=etag)
            except self._client_error as exc:
                if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    return
                if _code(exc) not in ("NotImplemented", "501", "InvalidArgument", "400"):
                    raise
                current = self.read(name)
                if current is not None and current.etag == etag:
                    self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def set_aside(self, name: str, new_name: str) -> str:
        with self._errors(f"moving {self.describe(name)} aside"):
            source = {"Bucket": self.bucket, "Key": self.key(name)}
            self.client.copy_object(Bucket=self.bucket, Key=self.key(new_name), CopySource=source)
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))
        return self.describe(new_name)

    def _list(self, folder: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
        prefix = self.key(folder.rstrip("/") + "/")
        with self._errors(f"listing {self.describe(folder)}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"MaxItems": limit} if limit else {}
            )
            for page in pages:
                yield from page.get("Contents", [])

    def has_folder(self, name: str) -> bool:
        return any(True for _ in self._list(name, limit=1))

    def remove_folder(self, name: str) -> None:
        keys = [item["Key"] for item in self._list(name)]
        with self._errors(f"removing {self.describe(name)}"):
            for start in range(0, len(keys), 1000):
                objects = [{"Key": key} for key in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def truncated(self, folder: str, suffix: str, magic: bytes) -> list[str]:
        """Objects in `folder` ending in `suffix` whose last bytes are not `magic`: one ranged GET each."""
        cut = []
        for item in self._list(folder):
            if not item["Key"].endswith(suffix):
                continue
            uri = f"s3://{self.bucket}/{item['Key']}"
            if item["Size"] < len(magic):
                cut.append(uri)
                continue
            with self._errors(f"reading {uri}"):
                answer = self.client.get_object(Bucket=self.bucket, Key=item["Key"], Range=f"bytes=-{len(magic)}")
                if answer["Body"].read() != magic:
                    cut.append(uri)
        return sorted(cut)

    # --- the run lease ----------------------------------------------------------------------------

    def lock(self, name: str, busy: Callable[[str], Exception], wait_seconds: float) -> Any:
        return lease(self, name, busy, wait_seconds)

    def check_conditional_writes(self) -> None:
        """Refuse a store that ignores `If-None-Match` (once per process and store): the lease, the pointer and
        Lance's own commits would all be unsafe on it."""
        _conditional_writes_checked(self.endpoint, self.bucket, self)

    # --- errors -----------------------------------------------------------------------------------

    @property
    def _client_error(self):
        from botocore.exceptions import ClientError

        return ClientError

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """botocore's exceptions as one clear line: what failed, where, and what to check."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"endpoint {self.endpoint}" if self.endpoint else "the default AWS endpoint"
        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if code in ("NoSuchBucket",):
                hint = f"the bucket {self.bucket} does not exist at {where}: create it, or fix vars.embedding.index_dir"
            elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                hint = (
                    f"{where} refused the credentials ({code}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                    "(and AWS_SESSION_TOKEN) in the environment"
                )
            else:
                hint = f"{where} answered {code}: {exc.response.get('Error', {}).get('Message') or exc}"
            raise StorageError(f"{doing} failed: {hint}") from None
        except NoCredentialsError:
            raise StorageError(
                f"{doing} failed: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
            ) from None
        except BotoCoreError as exc:
            raise StorageError(
                f"{doing} failed: {where} cannot be reached ({exc}): check AWS_ENDPOINT_URL (or "
                "vars.embedding.storage_options.endpoint) and the network"
            ) from None


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code or status


def _server_time(answer: dict[str, Any]) -> datetime | None:
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        return None


_checked_stores: set[tuple[str | None, str]] = set()
_checked_lock = threading.Lock()


def _conditional_writes_checked(endpoint: str | None, bucket: str, store: S3Objects) -> None:
    with _checked_lock:
        if (endpoint, bucket) in _checked_stores:
            return
        probe = f".conditional-write-probe-{uuid.uuid4().hex}"
        first = store.create(probe, b"{}")
        second = store.create(probe, b"{}") if first else None
        if first:
            store.delete_if(probe, first)
        if first is None or second is not None:
            raise StorageError(
                f"the object store at {store.describe('')} does not honour conditional writes (If-None-Match: *): "
                "the live pointer, the run lease and LanceDB's own commits rely on them. Use AWS S3, MinIO, Cloudflare "
                "R2 or another store that supports them (docs/object-storage.md)"
            )
        _checked_stores.add((endpoint, bucket))


# --- the lease ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    """Which boot of which machine: a pid is only meaningful within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lease:
    """A lease this process holds; `lost` is set when renewing it failed because another run took it."""

    store: S3Objects
    name: str
    etag: str
    body: dict[str, Any]
    lost: str = ""
    guard: threading.Lock = field(default_factory=threading.Lock)  # a renewal and a check, one at a time


_held: dict[str, Lease] = {}  # leases this process holds, by the lease object's URI


def lease_lost(location: IndexLocation, name: str) -> str:
    """Why this process's lease on the index is gone, checked against the store now ('' when it still holds
    it, or holds none): a run paused past its lease's expiry must not publish over the run that took it."""
    held_lease = _held.get(f"{location.uri}/{name}")
    if held_lease is None:
        return ""
    with held_lease.guard:
        if not held_lease.lost:
            current = held_lease.store.read(name)
            if current is None or current.etag != held_lease.etag:
                held_lease.lost = f"the lease {held_lease.store.describe(name)} was taken over by another run"
        return held_lease.lost


def _holder_text(body: dict[str, Any], age: float) -> str:
    left = max(float(body.get("ttl_seconds", LEASE_SECONDS)) - age, 0.0)
    return (
        f"pid {body.get('pid')} on {body.get('host')}, started {body.get('started')}, "
        f"lease {'renewed' if age < 1 else f'renewed {age:.0f} s ago'}, expires in {left:.0f} s"
    )


def _stale(body: dict[str, Any], age: float) -> bool:
    if age >= float(body.get("ttl_seconds", LEASE_SECONDS)):  # whole seconds: the server's clock says no more
        return True
    same_machine = body.get("host") == socket.gethostname() and body.get("boot_id") == _boot_id() != ""
    return same_machine and isinstance(body.get("pid"), int) and not _alive(body["pid"])


@contextlib.contextmanager
def lease(store: S3Objects, name: str, busy: Callable[[str], Exception], wait_seconds: float) -> Iterator[Lease]:
    """Hold the lease object `name` for the duration of the block, renewed in the background."""
    store.check_conditional_writes()
    body = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        "ttl_seconds": LEASE_SECONDS,
        "token": uuid.uuid4().hex,
    }
    data = json.dumps(body, sort_keys=True).encode("utf-8")
    deadline = time.monotonic() + wait_seconds
    while True:
        etag = store.create(name, data)
        if etag:
            break
        found = store.read_with_time(name)
        if found is None:
            continue  # released between the two requests
        current, age = found
        try:
            other = json.loads(current.data)
            if not isinstance(other, dict):
                raise ValueError("not an object")
        except ValueError:
            other = {"pid": None, "host": "unknown", "ttl_seconds": 0}  # unreadable: treat as expired
        if _stale(other, age):
            etag = store.replace_if(name, data, current.etag or "")
            if etag:
                log.warning("took over the expired lease %s (%s)", store.describe(name), _holder_text(other, age))
                break
            continue  # someone else took it over first
        if time.monotonic() >= deadline:
            raise busy(_holder_text(other, age))
        time.sleep(WAIT_POLL_SECONDS)

    held_lease = Lease(store, name, etag, body)
    key = f"{store.location.uri}/{name}"
    _held[key] = held_lease
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(held_lease, data, stop), name="index-lease", daemon=True)
    renewer.start()
    try:
        yield held_lease
    finally:
        stop.set()
        renewer.join()
        _held.pop(key, None)
        if not held_lease.lost:
            with contextlib.suppress(PipelineError):
                store.delete_if(name, held_lease.etag)


def _renew(held_lease: Lease, data: bytes, stop: threading.Event) -> None:
    while not stop.wait(RENEW_EVERY):
        with held_lease.guard:
            if held_lease.lost:
                return
            try:
                etag = held_lease.store.replace_if(held_lease.name, data, held_lease.etag)
            except PipelineError as exc:  # unreachable for now: try again at the next tick, the lease has time left
                log.warning("could not renew the index lease: %s", exc)
                continue
            if etag is None:
                held_lease.lost = (
                    f"the lease {held_lease.store.describe(held_lease.name)} was taken over by another run (this one "
                    f"did not renew it within {LEASE_SECONDS:.0f} s)"
                )
                log.error("%s", held_lease.lost)
                return
            held_lease.etag = etag


def storage_for(location: IndexLocation) -> LocalFiles | S3Objects:
    if not location.is_remote:
        assert location.path is not None
        return LocalFiles(location.path)
    return S3Objects(location)
