"""A stage's line in the run's summary, and the summary itself (summary.json and the table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rlaif.core.store import write_json
from rlaif.flows.failures import Failures


class StageReport(BaseModel):
    stage: str
    count_in: int
    count_out: int
    seconds: float
    cached: bool = False  # nothing to compute: served from Prefect's cache or found done in the shards
    notes: dict[str, Any] = Field(default_factory=dict)
    path: str = ""
    failures: Failures | None = None  # the stage's failed rows (generate, judge)


def write_summary(reports: list[StageReport], out: str, name: str = "summary.json") -> None:
    write_json(Path(out) / name, [r.model_dump() for r in reports])
