"""Failed rows: which completions and judgements failed, and whether the run may still exit 0.

A row that fails (a server that kept answering 503, a prompt longer than the model's context, a
judge request that timed out) is kept in its shard as a failed record, and every other row goes on
through the pipeline: one bad row never costs the rest. But a run with failed rows has not done
what it was asked, so it must not pass as a success:

    a stage that ends with no usable row     stops the run there (nothing to judge or binarize)
    more failed rows than flow.max_failed_rows   the run finishes everything it can, then exits 4

Either way the command prints a table of what failed (stage, model, row, error; the first
`SHOWN` rows and a count) above its one-line error. A rerun sends the transient failures again.

A judgement of a completion that failed is not counted again: that row failed at generation. A
verdict the judge wrote but that did not parse is a result (`unparsed`, in the summary), not a
failed row: asking again gives the same answer.
"""

from __future__ import annotations

from pydantic import BaseModel

from rlaif.core.errors import EXIT_FAILED_ROWS, RlaifError
from rlaif.core.records import Completion, Judgement, PairJudgement
from rlaif.core.store import Manifest, RunStore
from rlaif.judges.base import COMPLETION_FAILED

SHOWN = 10  # rows listed per stage; the rest are counted


class FailedRow(BaseModel):
    stage: str
    model: str  # the generator or the judge
    row: str  # the prompt id (and, for a judgement, the completion's member)
    error: str
    retryable: bool = False  # sent again by the next run


class Failures(BaseModel):
    """One stage's failed rows: how many, and the first few."""

    stage: str
    count: int = 0
    retryable: int = 0  # how many of them the next run sends again
    first: list[FailedRow] = []

    def add(self, row: FailedRow) -> None:
        self.count += 1
        self.retryable += row.retryable
        if len(self.first) < SHOWN:
            self.first.append(row)


def completion_failures(store: RunStore, manifest: Manifest) -> Failures:
    """The failed completions of a manifest (only shards that hold any are read)."""
    out = Failures(stage="generate")
    for s in manifest.shards:
        if s.failed:
            for c in store.iter(manifest.stage, s.key, Completion):
                if not c.ok:
                    out.add(FailedRow(stage="generate", model=c.model, row=c.prompt_id,
                                      error=c.error or "no text returned", retryable=c.retryable))
    return out


def judgement_failures(store: RunStore, manifest: Manifest, pairwise: bool) -> Failures:
    """The judge's own failed requests (not the judgements of completions that failed)."""
    out = Failures(stage="judge")
    kind = PairJudgement if pairwise else Judgement
    for s in manifest.shards:
        if s.counts.get("failed"):
            for j in store.iter(manifest.stage, s.key, kind):
                if j.status == "failed" and not (j.error or "").startswith(COMPLETION_FAILED):
                    member = f"{j.model_a} vs {j.model_b}" if isinstance(j, PairJudgement) else j.model
                    out.add(FailedRow(stage="judge", model=j.judge, row=f"{j.prompt_id} ({member})",
                                      error=j.error or "failed", retryable=j.retryable))
    return out


class FailedRows(RlaifError):
    """Rows failed beyond what the recipe allows, or a stage has no usable row: exit 4."""

    exit_code = EXIT_FAILED_ROWS

    def __init__(self, message: str, failures: list[Failures]):
        super().__init__(message)
        self.failures = failures

    def __reduce__(self):  # survives pickling between Prefect's processes
        return (FailedRows, (str(self), self.failures))

    def table(self):
        return failures_table(self.failures)


def no_usable_rows(stage: str, total: int, failures: Failures | None, detail: str = "") -> FailedRows:
    """The error for a stage that ended with nothing the next stage can use."""
    what = f"{total} rows, none usable" + (f" ({detail})" if detail else "")
    hint = "; fix the cause and rerun: the failed rows are sent again" if failures and failures.count else ""
    return FailedRows(f"stage {stage!r}: {what}; the run stops here{hint}", [failures] if failures else [])


def check_failed_rows(failures: list[Failures], allowed: int) -> None:
    """Raise `FailedRows` when more rows failed than `flow.max_failed_rows` allows."""
    total = sum(f.count for f in failures)
    if total > allowed:
        per = ", ".join(f"{f.stage} {f.count}" for f in failures if f.count)
        again = sum(f.retryable for f in failures)
        rerun = (f"a rerun sends the {again} transient ones again" if again
                 else "none of them is transient, so a rerun alone will not change them")
        raise FailedRows(f"{total} rows failed ({per}), more than flow.max_failed_rows ({allowed}); every row that "
                         f"succeeded is kept and {rerun}", [f for f in failures if f.count])


def failures_table(failures: list[Failures]):
    """A rich table of the failed rows: the first `SHOWN` per stage, and how many more."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="failed rows", title_justify="left")
    for col in ("stage", "model", "row", "error"):
        table.add_column(col, overflow="fold")
    for f in failures:
        for r in f.first:  # a server's message is text, never markup
            table.add_row(r.stage, escape(r.model), escape(r.row),
                          escape(r.error) + ("" if r.retryable else " [dim](not sent again)[/]"))
        if f.count > len(f.first):
            table.add_row(f.stage, "", f"... and {f.count - len(f.first)} more", "")
    return table
