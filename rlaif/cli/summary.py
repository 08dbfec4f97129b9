"""What a command prints at its end: the run's summary table, and a dry run's estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.cli.console import console, echo
from rlaif.flows.report import StageReport
from rlaif.recipe.dry_run import Estimate


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
    from rlaif.runners.context import run_context

    run_context().reporter.stop()  # the last progress display ends before the table
    con = console()
    con.width = max(con.width, 110)
    con.print(summary_table(reports, out))


def print_rounds(out: str) -> None:
    """The on-policy rounds' table (evaluation/rounds_report.py), from `<out>/rounds/summary.json`."""
    import json

    from rich.table import Table

    from rlaif.evaluation.rounds_report import cell, columns, title

    path = Path(out) / "rounds" / "summary.json"
    summary = json.loads(path.read_text())
    table = Table(title=f"on-policy rounds ({title(summary.get('dsft'))})", title_justify="left")
    shown = [c for c in columns(summary["rows"]) if c != "policy"]
    for col in shown:
        table.add_column(col, justify="left" if col == "round" else "right")
    for row in summary["rows"]:
        table.add_row(*(cell(row.get(c)) for c in shown))
    console().print(table)
    echo(f"written to {path}, {path.parent / 'rounds.md'}, {path.parent / 'rounds.png'}")


def print_estimate(estimates: list[Estimate], recipe_name: str) -> None:
    from rich.table import Table

    table = Table(title=f"rlaif run --dry-run: {recipe_name} (nothing sent)", title_justify="left")
    for col in ("stage", "name", "model", "runs on", "requests", "input tokens", "output tokens (max)", "cost ($)"):
        table.add_column(col, justify="right" if col in ("requests", "input tokens", "output tokens (max)",
                                                          "cost ($)") else "left")
    for e in estimates:
        table.add_row(e.stage, e.name, e.model, e.where, f"{e.requests:,}", f"{e.input_tokens:,}",
                      f"{e.output_tokens:,}", "-" if e.cost is None else f"{e.cost:,.2f}")
    costs = [e.cost for e in estimates if e.cost is not None]
    run = [e for e in estimates if not e.stage.endswith("(rlaif judge)")]
    table.add_row("total (rlaif run)", "", "", "", f"{sum(e.requests for e in run):,}",
                  f"{sum(e.input_tokens for e in run):,}", f"{sum(e.output_tokens for e in run):,}",
                  f"{sum(e.cost for e in run if e.cost is not None):,.2f}" if costs else "-")
    con = console()
    con.width = max(con.width, 140)
    con.print(table)
    echo("input tokens at 4 characters a token; output tokens at each request's max_tokens (an upper bound); "
         "prompts before hygiene; re-asks and reasoning tokens not counted. Costs from the endpoints' prices "
         "(per million tokens), with the Batch API's discount where batch: true.")
