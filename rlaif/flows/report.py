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


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def summary_table(reports: list[StageReport], out: str):
    from rich.table import Table

    table = Table(title=f"rlaif: {out}", title_justify="left")
    for col in ("stage", "in", "out", "seconds", "notes", "written to"):
        table.add_column(col)
    for r in reports:
        notes = ", ".join(f"{k}: {_fmt(v)}" for k, v in r.notes.items() if k != "inputs")
        secs = f"{r.seconds:.1f}" + (" (cached)" if r.cached else "")
        table.add_row(r.stage, str(r.count_in), str(r.count_out), secs, notes,
                      str(Path(r.path).relative_to(out)) if r.path.startswith(out) else r.path)
    return table


def print_summary(reports: list[StageReport], out: str) -> None:
    from rlaif.flows.console import console
    from rlaif.runners.context import run_context

    run_context().reporter.stop()  # the last progress display ends before the table
    con = console()
    con.width = max(con.width, 110)
    con.print(summary_table(reports, out))
