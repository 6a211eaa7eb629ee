"""API keys: created and revoked by `rp keys`, read by the running service, stored as hashes only.

The key store is a small JSON file of its own (setting `keys_path`), so the service never needs the
warehouse, and the dashboard reads it as an ops source. Layout:

    {"keys": [{"name", "key_hash", "key_prefix", "access_level", "rate_per_second", "daily_tokens",
               "created_at", "revoked_at"}]}

A key is `rp_` and 43 random URL-safe characters (256 bits from `secrets`). Only its SHA-256 is
stored: a key is shown once, when it is created, and cannot be recovered. Writers hold a lock file and
replace the file atomically; the service re-reads it when its inode, size or mtime changes, so a
revocation applies within `vars.serve.keys_poll_seconds`. A presented key is hashed and compared with
every stored hash in constant time (`hmac.compare_digest`), never with a dictionary lookup.

Example:
    rp keys create --name support-bot --access-level internal --rate 10/s --daily-tokens 200000
    rp keys revoke support-bot
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.common.output import Summary
from python_jobs.search.filters import ACCESS_LEVELS

log = logging.getLogger(__name__)

KEY_PREFIX = "rp_"
DISPLAY_PREFIX_CHARS = 6
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER_SECONDS = {None: 1, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


class KeyStoreError(PipelineError):
    """The key file or a key command's argument is invalid; the message names the file, entry or option."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class ApiKey:
    """One stored key: who it is, what it may read, its limits; never the key itself."""

    name: str
    key_hash: str
    key_prefix: str
    access_level: str
    rate_per_second: float | None
    daily_tokens: int | None
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_rate(text: str) -> float:
    """'10/s', '600/min', '2.5' (per second) -> requests per second."""
    match = _RATE.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise KeyStoreError(f"--rate {text!r} is not a rate: use N/s, N/min or N/hour with N > 0, e.g. 10/s")
    return float(match.group(1)) / _PER_SECONDS[match.group(2)]


# --- the file ---------------------------------------------------------------------------------


def read_keys(path: Path) -> list[ApiKey]:
    """Every key in the store (revoked ones too); an absent file is an empty store."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyStoreError(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyStoreError(f"the key file {path} is not valid JSON ({exc}): restore it or recreate the keys") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyStoreError(f'the key file {path} must be an object {{"keys": [...]}}')
    return [_entry(path, position, entry) for position, entry in enumerate(data["keys"])]


def _entry(path: Path, position: int, entry: Any) -> ApiKey:
    where = f"the key file {path}, keys[{position}]"
    if not isinstance(entry, dict):
        raise KeyStoreError(f"{where} must be an object")
    fields = set(ApiKey.__dataclass_fields__)
    missing = sorted(fields - {"revoked_at"} - set(entry))
    unknown = sorted(set(entry) - fields)
    if missing or unknown:
        raise KeyStoreError(
            f"{where}: " + "; ".join([*(f"{m} is missing" for m in missing), *(f"{u} is unknown" for u in unknown)])
        )
    key = ApiKey(**entry)
    if not isinstance(key.name, str) or not NAME_PATTERN.match(key.name):
        raise KeyStoreError(f"{where}: name {key.name!r} is not a key name")
    if key.access_level not in ACCESS_LEVELS:
        raise KeyStoreError(
            f"{where} ({key.name}): access_level {key.access_level!r} is not one of {', '.join(ACCESS_LEVELS)}"
        )
    if not isinstance(key.key_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", key.key_hash):
        raise KeyStoreError(f"{where} ({key.name}): key_hash must be 64 hex digits (a SHA-256)")
    rate_ok = key.rate_per_second is None or (
        isinstance(key.rate_per_second, int | float)
        and not isinstance(key.rate_per_second, bool)
        and key.rate_per_second > 0
    )
    if not rate_ok:
        raise KeyStoreError(f"{where} ({key.name}): rate_per_second must be a positive number or null")
    tokens_ok = key.daily_tokens is None or (
        isinstance(key.daily_tokens, int) and not isinstance(key.daily_tokens, bool) and key.daily_tokens >= 1
    )
    if not tokens_ok:
        raise KeyStoreError(f"{where} ({key.name}): daily_tokens must be a whole number, 1 or more, or null")
    return key


def _write_keys(path: Path, keys: list[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"keys": [asdict(key) for key in keys]}, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time: two `rp keys` commands must not lose each other's change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the commands -----------------------------------------------------------------------------


@dataclass
class KeyCreated(Summary):
    key: ApiKey
    secret: str
    path: str

    def to_json(self) -> dict:
        return {**asdict(self.key), "key": self.secret, "path": self.path}

    def to_text(self) -> str:
        rate = f"{self.key.rate_per_second:g}/s" if self.key.rate_per_second else "the default rate (vars.serve)"
        tokens = f"{self.key.daily_tokens:,}" if self.key.daily_tokens else "the default (vars.serve)"
        return "\n".join(
            [
                f"created key {self.key.name!r}: access level {self.key.access_level}, rate {rate}, "
                f"daily context tokens {tokens}; stored (hash only) in {self.path}",
                "Send it as `Authorization: Bearer <key>`. It is shown this once and cannot be recovered:",
                self.secret,
            ]
        )


@dataclass
class KeyRevoked(Summary):
    key: ApiKey
    path: str

    def to_json(self) -> dict:
        return {**asdict(self.key), "path": self.path}

    def to_text(self) -> str:
        return (
            f"revoked key {self.key.name!r} ({self.key.key_prefix}...) at {self.key.revoked_at}; "
            "a running service refuses it within seconds"
        )


@dataclass
class KeyList(Summary):
    keys: list[ApiKey]
    path: str

    def to_json(self) -> dict:
        return {"path": self.path, "keys": [asdict(key) for key in self.keys]}

    def to_text(self) -> str:
        if not self.keys:
            return f"no keys in {self.path}: create one with `rp keys create --name NAME --access-level public`"
        rows = [("name", "prefix", "access", "rate/s", "daily tokens", "created", "revoked")]
        for key in self.keys:
            rows.append(
                (
                    key.name,
                    key.key_prefix + "...",
                    key.access_level,
                    f"{key.rate_per_second:g}" if key.rate_per_second else "default",
                    f"{key.daily_tokens}" if key.daily_tokens else "default",
                    key.created_at,
                    key.revoked_at or "",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        return "\n".join([f"{len(self.keys)} key(s) in {self.path}", *lines])


def create_key(
    path: Path, name: str, access_level: str, rate_per_second: float | None = None, daily_tokens: int | None = None
) -> KeyCreated:
    """Add a key; the secret is returned once, only its hash is stored."""
    if not NAME_PATTERN.match(name or ""):
        raise KeyStoreError(
            f"--name {name!r} is not a key name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if access_level not in ACCESS_LEVELS:
        raise KeyStoreError(f"--access-level {access_level!r} is unknown: use one of {', '.join(ACCESS_LEVELS)}")
    if daily_tokens is not None and daily_tokens < 1:
        raise KeyStoreError(f"--daily-tokens {daily_tokens} must be 1 or more")
    with _locked(path):
        keys = read_keys(path)
        if any(key.name == name and key.active for key in keys):
            raise KeyStoreError(f"a key named {name!r} exists in {path}: revoke it first (`rp keys revoke {name}`)")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            name=name,
            key_hash=hash_key(secret),
            key_prefix=secret[:DISPLAY_PREFIX_CHARS],
            access_level=access_level,
            rate_per_second=rate_per_second,
            daily_tokens=daily_tokens,
            created_at=_now(),
        )
        _write_keys(path, [*keys, key])
    return KeyCreated(key, secret, str(path))


def revoke_key(path: Path, name: str) -> KeyRevoked:
    with _locked(path):
        keys = read_keys(path)
        position = next((i for i, key in enumerate(keys) if key.name == name and key.active), None)
        if position is None:
            known = sorted({key.name for key in keys if key.active})
            raise KeyStoreError(
                f"no active key named {name!r} in {path}" + (f": active keys are {', '.join(known)}" if known else "")
            )
        keys[position] = replace(keys[position], revoked_at=_now())
        _write_keys(path, keys)
    return KeyRevoked(keys[position], str(path))


def list_keys(path: Path) -> KeyList:
    return KeyList(read_keys(path), str(path))


# --- the service's view -----------------------------------------------------------------------


class KeyRing:
    """The active keys as the running service sees them, re-read when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._keys: tuple[ApiKey, ...] = ()
        self._signature: tuple | None = None
        self._loaded = False
        self._lock = threading.Lock()
        self.error: str | None = None
        self.refresh(strict=True)

    @property
    def active(self) -> tuple[ApiKey, ...]:
        return self._keys

    def refresh(self, strict: bool = False) -> bool:
        """Re-read the file if it changed; whether the keys changed. A broken file keeps the keys read
        before (and is reported on /readyz and in the log), unless `strict` (at startup), where it raises."""
        try:
            stat = self.path.stat()
            signature: tuple | None = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            signature = None
        if self._loaded and signature == self._signature:
            return False
        try:
            keys = tuple(key for key in read_keys(self.path) if key.active)
        except KeyStoreError as exc:
            if strict:
                raise
            if self.error != str(exc):
                log.error("keeping the keys read before: %s", exc)
            self.error = str(exc)
            self._signature, self._loaded = signature, True
            return False
        with self._lock:
            changed = keys != self._keys
            self._keys, self._signature, self._loaded, self.error = keys, signature, True, None
        if signature is None:
            log.warning("no key file at %s: every request is refused until `rp keys create` makes one", self.path)
        return changed

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key whose hash matches, compared with every stored hash in constant time."""
        digest = hash_key(presented)
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.key_hash):
                found = key
        return found
