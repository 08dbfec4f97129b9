"""The run store: each stage's records as JSONL shards in the run directory.

A shard is named by the content hash of everything that determines it, so "is this work done?" is
"does the file exist?". Shards are written to a temporary name and renamed into place, so a run
killed mid-write leaves no half shard behind, and a rerun recomputes only the missing ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

R = TypeVar("R", bound=BaseModel)


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def shard_path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"shard-{key}.jsonl"

    def has(self, stage: str, key: str) -> bool:
        return self.shard_path(stage, key).exists()

    def write(self, stage: str, key: str, records: Iterable[BaseModel]) -> Path:
        path = self.shard_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as f:
            for r in records:
                f.write(r.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def read(self, stage: str, key: str, kind: type[R]) -> list[R]:
        return self._read_file(self.shard_path(stage, key), kind)

    def read_all(self, stage: str, kind: type[R]) -> list[R]:
        return [r for p in sorted((self.root / stage).glob("shard-*.jsonl")) for r in self._read_file(p, kind)]

    @staticmethod
    def _read_file(path: Path, kind: type[R]) -> list[R]:
        with path.open() as f:
            return [kind.model_validate(json.loads(line)) for line in f if line.strip()]

    def write_json(self, name: str, obj: object) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
        return path
