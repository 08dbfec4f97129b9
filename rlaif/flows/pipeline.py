"""The pipeline as Prefect flows: prompts -> generate -> judge -> binarize (a dataset version) -> dSFT -> dDPO.

Every stage is a step (flows/steps.py) and runs the same way, through `run_step`: one thin Prefect
task whose cache key exists only when the stage, from its shards alone, has nothing to do, so
Prefect's cache is an accelerator on top of the shards, never the truth. Stages pass manifests
(shard paths and content hashes), never record lists, so memory and Prefect's results stay small
whatever the run's size. A stage that calls an endpoint is retried with exponential backoff,
re-sending only the rows that failed transiently.

Flows: `generate_flow`, `judge_flow`, `binarize_flow` (binarize and publish a dataset version),
each running its stage after the ones before it (which are done, or must be: `rlaif judge` never
generates), `train_flow`, and `pipeline_flow`, all of them through dSFT and dDPO. What a flow run
shares (run directory, recipe, engines, executor, progress display) is its `RunContext`
(flows/context.py). Every local model is loaded once per flow run: members and judges on one model
share it, and generation uses the judge's model last so judging finds it loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from rlaif.core.errors import JudgeDrifted, RlaifError, StageError, stage_errors
from rlaif.core.store import Manifest
from rlaif.runners.context import RunContext, flow_run, run_context
from rlaif.flows.failures import no_usable_rows
from rlaif.flows.report import StageReport
from rlaif.flows.steps import (JudgeStep, PromptsStep, PublishStep, SentinelStep, Step, TrainStep, generate_step,
                               train_inputs, variants)
from rlaif.prompts.hygiene import HygieneReport
from rlaif.preferences.versions import VersionInputs

CACHED = dict(persist_result=True, result_serializer="json")


def result_storage(out: str | Path) -> Path:
    """Where task results go (the manifests, as JSON): a plain path, which Prefect turns into a
    LocalFileSystem block, next to the shards."""
    return Path(out).resolve() / ".prefect" / "results"


class Pending(Exception):
    """A stage with work, met while the flow's body ran outside Prefect (flows/launch.py): the flow must run."""

    def __init__(self, step: Step, ctx: RunContext | None = None):
        super().__init__(step.name)
        self.step = step
        self.ctx = ctx  # the context it was met in (a round's own run dir and recipe): where its engine is planned


class TransientRows(StageError):
    """Rows of a stage failed transiently: the one failure Prefect tries a task again for."""

    def __reduce__(self):
        return (TransientRows, (self.stage, self.model, self.row, self.cause))


def _only_transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry for rows that failed transiently, never for an error no
    retry fixes (a wrong key, a refused request), which stops the stage at once."""
    return isinstance(state.data, TransientRows)


@task(name="stage", cache_policy=NO_CACHE, persist_result=False)
def stage_task(step: Step) -> Any:
    """Every stage's task: run what is left of it. Rows that failed transiently (HTTP 429/5xx,
    timeouts) make it fail while Prefect retries are left, so it runs again after a backoff and
    sends only those rows; on the last try they are kept as failed records for the next run."""
    ctx = run_context()
    with stage_errors(step.error_stage, step.error_model):
        out = step.run(ctx)
    run = TaskRunContext.get()
    bad = step.retryable_rows(out)
    if bad and run and run.task_run.run_count <= run.task.retries:
        raise TransientRows(step.name, None, None, f"{bad} rows failed transiently; trying again")
    return out


def run_step(step: Step, ctx: RunContext | None = None) -> tuple[Any, StageReport]:
    """Run one stage, the same way for all: its output and its report."""
    ctx = ctx or run_context()
    start = time.perf_counter()
    key = None if step.always_runs else step.done_key(ctx)
    if ctx.attempt:  # no flow: compute nothing, read what is done
        if step.always_runs:
            out = step.run(ctx)
        elif key is None:
            raise Pending(step, ctx)
        else:
            out = step.output(ctx)
        return out, step.report(ctx, out, time.perf_counter() - start, key is not None)
    opts: dict[str, Any] = dict(name=step.name)
    if not step.always_runs:
        opts.update(cache_key_fn=lambda *_: key, result_storage=result_storage(ctx.out), **CACHED)
    if step.remote:
        f = ctx.recipe.flow
        opts.update(retries=f.retries, retry_delay_seconds=exponential_backoff(backoff_factor=f.retry_delay_seconds),
                    retry_jitter_factor=f.retry_jitter_factor, retry_condition_fn=_only_transient)
    state = stage_task.with_options(**opts)(step, return_state=True)
    out = state.result()  # a failed task raises its StageError here
    return out, step.report(ctx, out, time.perf_counter() - start, key is not None or state.name == "Cached")


# ----------------------------------------------------------------------------- the stages in order
@dataclass
class Made:
    """What the data stages made, for a caller that goes on from them (a judge swap)."""

    prompts: Manifest | None = None
    hygiene: HygieneReport | None = None
    completions: Manifest | None = None
    judgements: Manifest | None = None
    reports: list[StageReport] = field(default_factory=list)


def run_stages(ctx: RunContext, until: str = "train", judge_name: str | None = None, read_only: tuple[str, ...] = (),
               force: bool = False, push: bool = True,
               prompts: tuple[Manifest, HygieneReport, StageReport] | None = None) -> Made:
    """The stages in order up to `until`. Stages named in `read_only` must be complete already
    (they are read, never computed). `prompts` replaces the prompts stage (a refresh's batches)."""
    recipe, rep, made = ctx.recipe, ctx.reporter, Made()
    if not recipe.makes_data:  # a recipe that only trains, on a dataset made elsewhere
        if until != "train":
            raise RlaifError(f"recipe {recipe.name!r} has no generators, so nothing to {until}: it only trains "
                             f"(`rlaif run` or `rlaif train`)")
        made.reports = train_stages(ctx)
        return made
    spec = recipe.judge_spec(judge_name)
    rep.stage("prompts")
    if prompts is None:
        (made.prompts, made.hygiene), r = run_step(PromptsStep(), ctx)
    else:
        made.prompts, made.hygiene, r = prompts
    made.reports.append(r)
    if r.count_out == 0:
        raise no_usable_rows("prompts", r.count_in, None, f"hygiene removed {made.hygiene.counts}")

    rep.stage("generate")
    gen = generate_step(ctx, made.prompts, spec if until != "generate" else None)
    if "generate" in read_only:
        missing = sorted({s.name for j in gen.plan(ctx) for s in j.shards if s.todo})
        if missing:
            raise RlaifError(f"{ctx.out} has no completions yet from {missing} for these prompts; "
                             f"run `rlaif generate` (or `rlaif run`) first")
    made.completions, r = run_step(gen, ctx)
    made.reports.append(r)
    if r.count_out == 0:
        raise no_usable_rows("generate", r.count_in, r.failures)
    if until == "generate":
        return made

    rep.stage(f"judge ({spec.name})")
    made.judgements, r = judge(ctx, made.completions, spec, read_only="judge" in read_only)
    made.reports.append(r)
    if r.count_out == 0:
        n = r.notes
        raise no_usable_rows("judge", n["total"], r.failures, f"unparsed {n['unparsed']}, failed {n['failed']}")
    if until == "judge":
        return made
    check = sentinel_check(ctx, made, spec) if spec.sentinels else None

    rep.stage("binarize")
    inputs = VersionInputs(made.prompts, made.hygiene, made.completions, made.judgements,
                           recipe.binarize_spec(spec.name), recipe.hygiene, spec.pairwise,
                           sentinel_check=check["key"] if check else None)
    _, r = run_step(PublishStep(inputs=inputs, force=force, push=push), ctx)
    made.reports.append(r)
    if until != "binarize":
        made.reports += train_stages(ctx)
    return made


def sentinel_check(ctx: RunContext, made: Made, spec) -> dict:
    """Judge the sentinels again (once per new set of judgements) and stop before publishing when
    more of their preferences flipped since the judge's first check than its `max_drift` allows."""
    from rich.markup import escape

    from rlaif.judges import sentinels

    ctx.reporter.stage(f"sentinels ({spec.name})")
    check, r = run_step(SentinelStep(prompts=made.prompts, completions=made.completions, judgements=made.judgements,
                                     spec=spec), ctx)
    made.reports.append(r)
    c = sentinels.Check.model_validate(check)
    line = sentinels.describe(c, sentinels.baseline(ctx.out, spec))
    if not r.cached:
        drift_artifact(ctx, spec, line)
    if sentinels.too_far(c, spec):
        raise JudgeDrifted(f"judge {spec.name}: {line}, past its max_drift of {spec.max_drift:.0%}; nothing "
                           f"published (verdicts kept; sentinels/{spec.name}/history.json). Pin the model snapshot "
                           f"you trust in the judge's `model:` (a new baseline), or raise its max_drift")
    ctx.reporter.note(escape(line))
    return check


def drift_artifact(ctx: RunContext, spec, line: str) -> None:
    """The judge's sentinel checks as a table artifact of the flow run, where the Prefect UI of a
    scheduled refresh shows it (`sentinels-<judge>`, one row per check)."""
    import re

    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    from rlaif.judges import sentinels

    if ctx.attempt or FlowRunContext.get() is None:
        return
    rows = [{"check": c.number, "version": c.version, "created": c.created, "served": "; ".join(c.served),
             **{k: (c.drift.model_dump()[k] if c.drift else None) for k in ("flipped", "pairs", "flip_rate",
                                                                             "score_shift", "spearman", "kappa")}}
            for c in sentinels.history(ctx.out, spec.name)]
    create_table_artifact(table=rows, key="sentinels-" + re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()),
                          description=f"judge {spec.name}: {line} (max_drift {spec.max_drift:.0%})")


def judge(ctx: RunContext, completions: Manifest, spec, read_only: bool = False) -> tuple[Manifest, StageReport]:
    """One judge over the completions (`read_only`: it must have judged them already)."""
    step = JudgeStep(completions=completions, spec=spec)
    if read_only and any(j.todo for j in step.plan(ctx)):
        raise RlaifError(f"{ctx.out}: judge {spec.name!r} has not judged these completions with its current "
                         f"settings; run `rlaif judge RECIPE --judge {spec.name}` (or `rlaif run`) first")
    return run_step(step, ctx)


def train_stages(ctx: RunContext) -> list[StageReport]:
    """dSFT then dDPO, those the recipe has."""
    reports = []
    for stage in ("sft", "dpo"):
        if getattr(ctx.recipe.train, stage) is not None:
            reports += train_stage(ctx, stage)
    return reports


def train_stage(ctx: RunContext, stage: str) -> list[StageReport]:
    """A training stage, or each of its dDPO variants in turn (the first computes the reference pass)."""
    ctx.reporter.stage(f"train-{stage}")
    return [run_step(TrainStep(stage=stage, inputs=train_inputs(stage, ctx.recipe, ctx.out, v), variant=v), ctx)[1]
            for v in variants(stage, ctx.recipe)]


# ----------------------------------------------------------------------------- flows
@flow(name="rlaif-generate", log_prints=False)
def generate_flow(recipe, out: str) -> list[StageReport]:
    """Generation alone (`rlaif generate`)."""
    with flow_run(recipe, out) as ctx:
        return run_stages(ctx, "generate").reports


@flow(name="rlaif-judge", log_prints=False)
def judge_flow(recipe, out: str, judge_name: str | None = None) -> list[StageReport]:
    """Judging with one of the recipe's judges, on completions already generated (`rlaif judge`)."""
    with flow_run(recipe, out) as ctx:
        return run_stages(ctx, "judge", judge_name, read_only=("generate",)).reports


@flow(name="rlaif-binarize", log_prints=False)
def binarize_flow(recipe, out: str, judge_name: str | None = None, force: bool = False,
                  push: bool = True) -> list[StageReport]:
    """Binarize one judge's verdicts and publish them as the next dataset version (`rlaif binarize`)."""
    with flow_run(recipe, out) as ctx:
        return run_stages(ctx, "binarize", judge_name, read_only=("generate", "judge"), force=force, push=push).reports


@flow(name="rlaif-train", log_prints=False)
def train_flow(recipe, out: str, stage: str) -> list[StageReport]:
    """One training stage on the run's dataset (`rlaif train sft|dpo`)."""
    with flow_run(recipe, out) as ctx:
        return train_stage(ctx, stage)


@flow(name="rlaif-pipeline", log_prints=False)
def pipeline_flow(recipe, out: str) -> list[StageReport]:
    """Every stage of a recipe into `out` (`rlaif run`); dSFT and dDPO when the recipe has them."""
    with flow_run(recipe, out) as ctx:
        return run_stages(ctx, "train").reports
