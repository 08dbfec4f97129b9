"""The run store: each stage's records as JSONL shards in the run directory, and what they hold.

A shard is named by the content hash of everything that determines it, so "is this work done?" is
a question about files. Beside each shard a small `.meta.json` says how many rows it holds, how
many are usable, how many failed transiently, and the hash of its bytes, so a stage can tell what
is done, what to send again and what is missing without reading any record:

    done       the shard exists, matches its metadata, and no row failed transiently
    retry      the shard exists, matches its metadata, and some rows failed transiently (HTTP 429/5xx, timeouts)
    missing    no shard (never written, or deleted), or a damaged one: its rows, size or byte hash
               differ from its metadata (lines lost, emptied, edited). A damaged shard is set aside
               as `shard-<key>.jsonl.damaged` and made again.

A stage passes on a `Manifest`: the shards it wrote, each with its content hash. The next stage
keys its own shards on those hashes, so a regenerated shard is re-judged and nothing else is.

Every file is written to a unique temporary name, fsynced and renamed into place, so a run killed
at any point (or two writers at once) leaves whole files only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from rlaif.core.errors import ConfigError, RlaifError, os_error_message
from rlaif.core.records import content_hash

R = TypeVar("R", bound=BaseModel)
log = logging.getLogger(__name__)
RUNS = "runs"


def default_run_dir(name: str) -> Path:
    """Where a recipe's run lives unless --out says otherwise."""
    return Path(RUNS) / name


# ----------------------------------------------------------------------------- atomic files
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A temporary name beside `path` that no other writer uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file or nothing: temp name, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name it
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    _fsync_dir(path.parent)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- shards
class ShardInfo(BaseModel):
    """What one shard holds; written beside it as `shard-<key>.meta.json`."""

    key: str
    rows: int
    ok: int
    retryable: int
    sha: str  # hash of the file's bytes: what later stages key on
    size: int
    group: str = ""  # the prompt chunk a generation or judge shard belongs to
    name: str = ""  # the member or judge that wrote it
    counts: dict[str, int] = {}  # verdicts: rows per status and re-asked ("retried"); completions: output_tokens
    worker: dict[str, str] = {}  # where it was made on a Ray cluster: node id, host, pid (runners/ray.py)
    inputs: list[str] = []  # the content hashes of the shards it was made from (a judge shard: its completions')

    @property
    def failed(self) -> int:
        return self.rows - self.ok


class Manifest(BaseModel):
    """A stage's output: its shards in order, each named and hashed. Small, whatever the run's size."""

    stage: str  # the folder under the run dir, e.g. "completions" or "judgements/uf"
    shards: list[ShardInfo] = []

    @property
    def hash(self) -> str:
        return content_hash(self.stage, [(s.key, s.sha) for s in self.shards])

    def total(self, what: str) -> int:
        return sum(getattr(s, what) for s in self.shards)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            for k, v in s.counts.items():
                out[k] = out.get(k, 0) + v
        return out

    def by_group(self) -> dict[str, list[ShardInfo]]:
        out: dict[str, list[ShardInfo]] = {}
        for s in self.shards:
            out.setdefault(s.group, []).append(s)
        return out


@dataclass
class StageState:
    """Which of a stage's expected shards are done, hold rows to send again, or are missing."""

    done: list[ShardInfo] = field(default_factory=list)
    retry: list[ShardInfo] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.retry and not self.missing

    def describe(self) -> str:
        total = len(self.done) + len(self.retry) + len(self.missing)
        parts = [f"{len(self.done)} of {total} shards done"]
        if self.retry:
            parts.append(f"{sum(s.retryable for s in self.retry)} rows to send again")
        return ", ".join(parts)


def _stats(records: Iterable[BaseModel]) -> tuple[bytes, int, int, int, dict[str, int]]:
    lines, rows, ok, retry, counts = [], 0, 0, 0, {}
    for r in records:
        lines.append(r.model_dump_json())
        rows += 1
        ok += bool(getattr(r, "ok", True))
        retry += bool(getattr(r, "retryable", False))
        tokens = getattr(r, "output_tokens", None)
        if tokens:
            counts["output_tokens"] = counts.get("output_tokens", 0) + tokens
        status = getattr(r, "status", None)
        if status is not None:
            counts[status] = counts.get(status, 0) + 1
            counts["retried"] = counts.get("retried", 0) + (getattr(r, "retries", 0) > 0)
    return ("\n".join(lines) + "\n" if lines else "").encode(), rows, ok, retry, counts


# shards already checked in this process: path -> ((inode, size, mtime), sha); checked again if the file changes
_VERIFIED: dict[Path, tuple[tuple[int, int, int], str]] = {}


def _rows(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())


def _mismatch(info: ShardInfo, data: bytes) -> str | None:
    """Why a shard's bytes are not the ones its metadata describes, or None when they are."""
    rows = _rows(data)
    if len(data) != info.size or rows != info.rows:
        return f"{rows} rows and {len(data)} bytes where its .meta.json says {info.rows} rows and {info.size} bytes"
    if hashlib.sha256(data).hexdigest()[:16] != info.sha:
        return "its bytes do not hash to the sha in its .meta.json"
    return None


class RunStore:
    """One run directory: shards per stage, their metadata, and JSON reports."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"shard-{key}.jsonl"

    def _meta(self, stage: str, key: str) -> Path:
        return self.root / stage / f"shard-{key}.meta.json"

    def has(self, stage: str, key: str) -> bool:
        return self.path(stage, key).exists()

    def write(self, stage: str, key: str, records: Iterable[BaseModel], group: str = "", name: str = "",
              worker: dict[str, str] | None = None, inputs: list[str] | None = None) -> ShardInfo:
        """Write a whole shard (atomically), then its metadata; returns the metadata."""
        data, rows, ok, retry, counts = _stats(records)
        path = write_atomic(self.path(stage, key), data)
        info = ShardInfo(key=key, rows=rows, ok=ok, retryable=retry, sha=hashlib.sha256(data).hexdigest()[:16],
                         size=len(data), group=group, name=name, counts=counts, worker=worker or {},
                         inputs=inputs or [])
        write_atomic(self._meta(stage, key), info.model_dump_json())
        aside = self.damaged_path(stage, key)
        for p in (aside, aside.with_name(aside.name + ".why")):  # made again: the damaged copy goes
            p.unlink(missing_ok=True)
        st = path.stat()
        _VERIFIED[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), info.sha)
        return info

    def damaged_path(self, stage: str, key: str) -> Path:
        """Where a shard that failed its check is set aside (kept to look at; never read as a shard)."""
        return self.root / stage / f"shard-{key}.jsonl.damaged"

    def info(self, stage: str, key: str, kind: type[BaseModel] | None = None) -> ShardInfo | None:
        """The shard's metadata, or None if there is no finished shard. A shard counts as finished
        only when its `.meta.json` matches the file: the same size, the same number of rows and the
        same hash of its bytes. A shard that does not match (lines lost, emptied, edited by hand, or
        its metadata gone) is damaged: it is set aside as `shard-<key>.jsonl.damaged` and reads as
        missing, so its stage makes it again (`damaged_notes` says so on the console)."""
        path = self.path(stage, key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        try:
            info = ShardInfo.model_validate_json(self._meta(stage, key).read_text())
        except (OSError, ValueError):
            info = None
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if info is not None and _VERIFIED.get(path) == (stamp, info.sha):
            return info
        why = "no .meta.json beside it" if info is None else _mismatch(info, path.read_bytes())
        if why is None:
            _VERIFIED[path] = (stamp, info.sha)
            return info
        self._set_aside(stage, key, why)
        return None

    def _set_aside(self, stage: str, key: str, why: str) -> None:
        path, aside = self.path(stage, key), self.damaged_path(stage, key)
        log.warning("%s is damaged (%s): set aside as %s and made again", path, why, aside.name)
        try:
            os.replace(path, aside)
            write_atomic(aside.with_name(aside.name + ".why"), why + "\n")
        except OSError:  # a read-only run: it still reads as missing, and the write that follows says why
            pass

    def damaged_notes(self, stage: str, keys: Iterable[str]) -> list[str]:
        """One console line per shard of `keys` that was found damaged and is to be made again."""
        out = []
        for key in keys:
            aside = self.damaged_path(stage, key)
            if aside.exists():
                try:
                    why = aside.with_name(aside.name + ".why").read_text().strip()
                except OSError:
                    why = "it did not match its .meta.json"
                out.append(f"{stage}/{self.path(stage, key).name} was damaged ({why}): made again; "
                           f"the damaged copy is {aside}")
        return out

    def state(self, stage: str, keys: Iterable[str], kind: type[BaseModel]) -> StageState:
        s = StageState()
        for key in keys:
            info = self.info(stage, key, kind)
            if info is None:
                s.missing.append(key)
            elif info.retryable:
                s.retry.append(info)
            else:
                s.done.append(info)
        return s

    def read(self, stage: str, key: str, kind: type[R]) -> list[R]:
        return list(self.iter(stage, key, kind))

    def iter(self, stage: str, key: str, kind: type[R]) -> Iterator[R]:
        path = self.path(stage, key)
        with path.open() as f:
            yield from self._parse(f, kind, path)

    def read_manifest(self, manifest: Manifest, kind: type[R], group: str | None = None) -> Iterator[R]:
        """Every record of a manifest's shards (of one group), shard by shard: memory stays one shard."""
        for s in manifest.shards:
            if group is None or s.group == group:
                yield from self.iter(manifest.stage, s.key, kind)

    @staticmethod
    def _parse(lines: Iterable[str], kind: type[R], path: Path) -> Iterator[R]:
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield kind.model_validate_json(line)
                except ValueError as e:
                    raise RlaifError(f"{path}, line {n}: not a {kind.__name__} record ({str(e).splitlines()[0]}); "
                                     f"delete the shard to recompute it") from None

    def keys(self, stage: str) -> list[str]:
        return sorted(p.name[len("shard-"):-len(".jsonl")] for p in (self.root / stage).glob("shard-*.jsonl"))

    def write_json(self, name: str, obj: object) -> Path:
        return write_json(self.root / name, obj)


# ----------------------------------------------------------------------------- one run at a time
class RunLocked(RlaifError):
    pass


@contextmanager
def run_lock(root: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold the run directory for this process: a second run on it fails at once naming the holder
    (or waits, with `wait`). The lock is the kernel's (flock), so it dies with its process."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot write the run directory {root}: {os_error_message(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunLocked(f"{root} is in use by another rlaif process (pid {holder}); wait for it to "
                            f"finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_writable(root: str | Path) -> None:
    """Raise ConfigError (exit 2, one line) unless this process can create files in `root`: a
    read-only run directory is a setup mistake found before the command starts, not a stage's crash."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".write-check-", suffix=".tmp", dir=root)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ConfigError(f"cannot write the run directory {root}: {os_error_message(e)}") from None


def clean_leftovers(root: str | Path) -> list[Path]:
    """Remove temporary files and folders a killed process left (only while holding the run lock)."""
    import shutil

    root = Path(root)
    gone = []
    # temp files of write_atomic, unfinished versions, the `dataset` link's temp name (versions.py)
    pattern = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$|^\.incoming-|^\.dataset-\d+-\d+$")
    for p in root.rglob(".*"):
        if pattern.match(p.name) and ".prefect" not in p.parts:
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
            except OSError:
                continue  # not ours to remove (read-only): the run's own writes will say so
            gone.append(p)
    return gone
