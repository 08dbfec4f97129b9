"""The pipeline as Prefect flows: prompts -> generate -> judge -> binarize (a dataset version) -> dSFT -> dDPO.

Each task is one call to a stage function plus a report; the logic lives in the stages. Stages
pass manifests (shard paths and content hashes), never record lists, so memory and Prefect's
results stay small whatever the run's size. A stage says from its shards alone what is done, what
failed transiently and what is missing; a task's cache key exists only when its stage is done
(flows/caching.py), so Prefect's cache is an accelerator on top of the shards, never the truth.
Tasks that call a remote endpoint are retried with exponential backoff, re-sending only the rows
that failed transiently.

Flows: `generate_flow`, `judge_flow`, `binarize_flow` (binarize and publish a dataset version),
each running its stage after the ones before it (which are done, or must be: `rlaif judge` never
generates), and `pipeline_flow`, all of them through dSFT and dDPO. Every local model is loaded
once per flow run (`EnginePool`): members and judges on one model share it, and generation uses
the judge's model last so judging finds it loaded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field

from rlaif.core.errors import RlaifError, StageError, stage_errors
from rlaif.core.progress import NULL, Reporter
from rlaif.core.store import Manifest, RunStore, write_json
from rlaif.engines.pool import EnginePool, free_accelerator
from rlaif.flows import caching, launch
from rlaif.flows.failures import Failures, completion_failures, judgement_failures, no_usable_rows
from rlaif.flows.recipe import Recipe
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.generation.ensemble import generate, manifest_of, plan_generation
from rlaif.judges.spec import JudgeSpec
from rlaif.judges.stage import judge_dir, manifest_counts, plan_judging, run_judge
from rlaif.preferences.binarize import BinarizeSpec
from rlaif.preferences.hygiene import HygieneReport, prepare_prompts
from rlaif.preferences.versions import publish, version_manifest

STAGES = ("prompts", "generate", "judge", "binarize", "train")


class StageReport(BaseModel):
    stage: str
    count_in: int
    count_out: int
    seconds: float
    cached: bool = False  # nothing to compute: served from Prefect's cache or found done in the shards
    notes: dict[str, Any] = Field(default_factory=dict)
    path: str = ""
    failures: Failures | None = None  # the stage's failed rows (generate, judge)


# ----------------------------------------------------------------------------- the run's session
@dataclass
class Session:
    """What the tasks of one flow run share in this process: loaded engines, the progress display."""

    pool: EnginePool
    reporter: Reporter
    cluster: Any = None  # a flows.cluster.Cluster when the run goes to Ray (`--ray`, RAY_ADDRESS)


_session: Session | None = None
_reporter: Reporter = NULL
_shared_pool: EnginePool | None = None


def set_reporter(reporter: Reporter) -> None:
    """The command line's progress display; flows run elsewhere (a deployment) log instead."""
    global _reporter
    _reporter = reporter


def reporter() -> Reporter:
    return _reporter


def shared_pool() -> EnginePool | None:
    """The pool `shared_engines` set, if any."""
    return _shared_pool


@contextmanager
def shared_engines(pool: EnginePool) -> Iterator[EnginePool]:
    """Flow runs in this block use `pool` (and leave its engines loaded), so several flows in one
    process load each model once: benchmarks and tests."""
    global _shared_pool
    before, _shared_pool = _shared_pool, pool
    try:
        yield pool
    finally:
        _shared_pool = before


@contextmanager
def session(seed: int = 0) -> Iterator[Session]:
    """One engine pool for a flow run (nested flows share the outer one); engines released at the end."""
    global _session
    if _session is not None:
        yield _session
        return
    from rlaif.flows.cluster import address, cluster

    with cluster(address()) as ray_cluster:
        if _shared_pool is not None:
            _session = Session(_shared_pool, _reporter, ray_cluster)
            try:
                yield _session
            finally:
                _session = None
            return
        with EnginePool(seed=seed) as pool:
            _session = Session(pool, _reporter, ray_cluster)
            try:
                yield _session
            finally:
                _session = None


def current() -> Session:
    if _session is None:
        raise RuntimeError("stage tasks run inside a flow's session()")
    return _session


# ----------------------------------------------------------------------------- tasks: one stage call each
@task(name="prompts", cache_policy=NO_CACHE, persist_result=False)
def prompts_task(recipe: Recipe, out: str) -> tuple[Manifest, HygieneReport]:
    p = recipe.prompts  # always read: the source may grow
    with stage_errors("prompts"):
        return prepare_prompts(p.source, p.split, p.limit, recipe.hygiene, RunStore(out), recipe.shard_size,
                               current().reporter)


@task(name="generate", cache_key_fn=caching.generate_key, **caching.CACHED)
def generate_task(prompts: Manifest, recipe: Recipe, out: str, last: str | None = None,
                  judge: JudgeSpec | None = None) -> Manifest:
    """`judge`: on a Ray cluster, judge each chunk as its completions are written (the judge stage
    then finds those shards done)."""
    with stage_errors("generate"):
        s = current()
        if s.cluster is not None:
            manifest = s.cluster.generate(prompts, recipe.generators, RunStore(out), recipe.engine,
                                          recipe.models_per_prompt, recipe.seed, judge, s.reporter)
        else:
            manifest = generate(prompts, recipe.generators, RunStore(out), s.pool, recipe.engine,
                                recipe.models_per_prompt, recipe.seed, last, s.reporter)
    _retry_transient_rows("generate", manifest)
    return manifest


@task(name="judge", cache_key_fn=caching.judge_key, **caching.CACHED)
def judge_task(prompts: Manifest, completions: Manifest, spec: JudgeSpec, recipe: Recipe, out: str) -> Manifest:
    with stage_errors("judge", spec.name):
        s = current()
        if s.cluster is not None:
            s.cluster.judge(prompts, completions, recipe.generators, RunStore(out), spec, recipe.engine, recipe.seed,
                            s.reporter)
        manifest = run_judge(prompts, completions, spec, RunStore(out), s.pool, recipe.engine, recipe.seed, s.reporter)
    _retry_transient_rows("judge", manifest)
    return manifest


@task(name="publish", cache_key_fn=caching.publish_key, **caching.CACHED)
def publish_task(prompts: Manifest, hygiene: HygieneReport, completions: Manifest, judgements: Manifest,
                 spec: BinarizeSpec, recipe: Recipe, out: str, force: bool = False, push: bool = True) -> str:
    with stage_errors("binarize", spec.judge):
        return str(publish(RunStore(out), recipe.model_dump(mode="json"), prompts, hygiene, completions, judgements,
                           spec, recipe.hygiene, recipe.judge_spec(spec.judge).pairwise, force, push, current().reporter))


@task(name="train", cache_key_fn=caching.train_key, **caching.CACHED)
def train_task(stage: str, recipe: Recipe, out: str, inputs: str, variant: str | None = None) -> dict[str, Any]:
    """One training stage, or one variant of dDPO (`variant`: into dpo/<variant>/)."""
    from rlaif.training.common import is_trained, mark_trained, stage_state

    spec = stage_spec(stage, recipe, variant)
    path = stage_dir(stage, out, variant)
    if is_trained(path, inputs):  # the stage's own state, whatever Prefect's cache holds
        return stage_state(path)
    with stage_errors(f"train-{stage}" + (f"-{variant}" if variant else ""), spec.model):
        free_accelerator(_session.pool if _session is not None else None)  # the GPU to the trainer alone
        rep = _session.reporter if _session is not None else _reporter  # other ranks of a launch: no session
        if stage == "sft":
            from rlaif.training.sft import train_sft

            metrics = train_sft(Path(out) / "dataset", spec, path, inputs=inputs, reporter=rep)
        else:
            from rlaif.training.dpo import train_dpo

            metrics = train_dpo(Path(out) / "dataset", spec, path, inputs=inputs, reporter=rep, run=out)
        mark_trained(path, inputs, metrics, start_model=metrics.get("start_model"), resumed_from=metrics.get("resumed_from"))
    return stage_state(path)


def variants(stage: str, recipe: Recipe) -> list[str | None]:
    """What a training stage trains: itself ([None]), or each dDPO variant by name."""
    spec = getattr(recipe.train, stage)
    return [name for name, _ in spec.variant_specs()] if stage == "dpo" and spec.variants else [None]


def stage_spec(stage: str, recipe: Recipe, variant: str | None = None) -> Any:
    spec = getattr(recipe.train, stage)
    return spec if variant is None else dict(spec.variant_specs())[variant]


def stage_dir(stage: str, out: str | Path, variant: str | None = None) -> Path:
    return Path(out) / stage / variant if variant else Path(out) / stage


class TransientRows(StageError):
    """Rows of a stage failed transiently: the one failure Prefect tries a task again for."""

    def __reduce__(self):
        return (TransientRows, (self.stage, self.model, self.row, self.cause))


def _retry_transient_rows(stage: str, manifest: Manifest) -> None:
    """Rows that failed transiently (HTTP 429/5xx, timeouts) make the task fail while Prefect
    retries are left, so it runs again after a backoff and the stage re-sends only those rows.
    On the last try the rows are kept as failed records, and the next run sends them again."""
    ctx = TaskRunContext.get()
    bad = manifest.total("retryable")
    if bad and ctx and ctx.task_run.run_count <= ctx.task.retries:
        raise TransientRows(stage, None, None, f"{bad} rows failed transiently; trying again")


def _only_transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry for rows that failed transiently, never for an error no
    retry fixes (a wrong key, a refused request), which stops the stage at once."""
    return isinstance(state.data, TransientRows)


# ----------------------------------------------------------------------------- running a task
def call(t, out: str, *args: Any, remote: bool = False, recipe: Recipe | None = None) -> tuple[Any, bool, float]:
    """Run a task with its results in the run directory; returns (value, cached, seconds), where
    `cached` means its stage had nothing to compute (a cache key exists only then).
    `remote`: the stage calls an endpoint, so retry with exponential backoff from the recipe."""
    key_fn = getattr(t, "cache_key_fn", None)
    params = _parameters(t, args) if key_fn is not None else {}
    done = key_fn is not None and key_fn(None, params) is not None
    if launch.direct():  # no flow: run the task's function only if its stage is done
        if key_fn is not None and not done:
            raise launch.Pending(t.name, params)
        start = time.perf_counter()
        return t.fn(*args), done, time.perf_counter() - start
    opts: dict[str, Any] = dict(result_storage=caching.result_storage(out))
    if remote and recipe is not None:
        f = recipe.flow
        opts.update(retries=f.retries, retry_delay_seconds=exponential_backoff(backoff_factor=f.retry_delay_seconds),
                    retry_jitter_factor=f.retry_jitter_factor, retry_condition_fn=_only_transient)
    start = time.perf_counter()
    state = t.with_options(**opts)(*args, return_state=True)
    value = state.result()  # a failed task raises its StageError here
    return value, done or state.name == "Cached", time.perf_counter() - start


def _parameters(t, args: tuple) -> dict[str, Any]:
    import inspect

    bound = inspect.signature(t.fn).bind(*args)
    bound.apply_defaults()
    return dict(bound.arguments)


def _ray_notes() -> dict[str, Any]:
    """What the Ray cluster did since the last report (shards judged beside generation count there)."""
    cluster = current().cluster
    notes = cluster.stats.notes() if cluster is not None else {}
    return {"ray": notes} if notes else {}


# ----------------------------------------------------------------------------- the steps
def prompts_step(recipe: Recipe, out: str) -> tuple[Manifest, HygieneReport, StageReport]:
    (manifest, hy), _, secs = call(prompts_task, out, recipe, out)
    return manifest, hy, StageReport(stage="prompts", count_in=hy.prompts_in, count_out=hy.kept, seconds=secs,
                                     notes={"source": recipe.prompts.source, "chunks": len(manifest.shards),
                                            **({"removed": hy.counts} if hy.removed else {})},
                                     path=str(Path(out) / manifest.stage))


def generate_step(prompts: Manifest, recipe: Recipe, out: str, last: str | None = None,
                  require_done: bool = False, judge: JudgeSpec | None = None) -> tuple[Manifest, StageReport]:
    store = RunStore(out)
    if require_done:
        units = plan_generation(prompts, recipe.generators, store, recipe.models_per_prompt, recipe.seed)
        missing = sorted({u.spec.name for u in units if u.todo})
        if missing:
            raise RlaifError(f"{out} has no completions yet from {missing} for these prompts; "
                             f"run `rlaif generate` (or `rlaif run`) first")
        return manifest_of(units), _generate_report(store, manifest_of(units), recipe, out, 0.0, True)
    remote = any(g.endpoint is not None for g in recipe.generators)
    manifest, cached, secs = call(generate_task, out, prompts, recipe, out, last, judge, remote=remote, recipe=recipe)
    return manifest, _generate_report(store, manifest, recipe, out, secs, cached)


def _generate_report(store: RunStore, m: Manifest, recipe: Recipe, out: str, secs: float, cached: bool) -> StageReport:
    failures = completion_failures(store, m)
    _note_failures(failures)
    per_model = {g.name: sum(s.ok for s in m.shards if s.name == g.name) for g in recipe.generators}
    notes = {"failed": m.total("failed"), "retried next run": m.total("retryable"), "per_model": per_model,
             "output_tokens": m.counts().get("output_tokens", 0), **_ray_notes()}
    return StageReport(stage="generate", count_in=m.total("rows"), count_out=m.total("ok"), seconds=secs,
                       cached=cached, notes=notes, path=str(Path(out) / COMPLETIONS), failures=failures)


def _note_failures(f: Failures) -> None:
    """One line as soon as a stage ends with failed rows; the table comes with the command's end."""
    if f.count:
        from rich.markup import escape

        first = f.first[0]
        current().reporter.note(f"[yellow]{f.count} rows failed[/] in {f.stage} ({f.retryable} to send again), "
                                f"first: model {escape(first.model)}, row {escape(first.row)}: {escape(first.error)}")


def judge_step(prompts: Manifest, completions: Manifest, spec: JudgeSpec, recipe: Recipe, out: str,
               require_done: bool = False) -> tuple[Manifest, StageReport]:
    if require_done:
        units = plan_judging(completions, spec, RunStore(out))
        if any(u.todo for u in units):
            raise RlaifError(f"{out}: judge {spec.name!r} has not judged these completions with its current "
                             f"settings; run `rlaif judge RECIPE --judge {spec.name}` (or `rlaif run`) first")
        manifest, cached, secs = Manifest(stage=judge_dir(spec.name), shards=[u.info for u in units]), True, 0.0
    else:
        manifest, cached, secs = call(judge_task, out, prompts, completions, spec, recipe, out,
                                      remote=spec.endpoint is not None, recipe=recipe)
    counts = manifest_counts(manifest)  # parsed / retried / unparsed / failed
    failures = judgement_failures(RunStore(out), manifest, spec.pairwise)
    _note_failures(failures)
    return manifest, StageReport(stage="judge", count_in=completions.total("rows"), count_out=counts["parsed"],
                                 seconds=secs, cached=cached, notes={"judge": spec.name, "kind": spec.kind, **counts,
                                                                     **_ray_notes()},
                                 path=str(Path(out) / manifest.stage), failures=failures)


def binarize_step(prompts: Manifest, hygiene: HygieneReport, completions: Manifest, judgements: Manifest,
                  spec: BinarizeSpec, recipe: Recipe, out: str, force: bool = False, push: bool = True) -> StageReport:
    """Binarize and publish a dataset version; `<out>/dataset` points at it."""
    version, cached, secs = call(publish_task, out, prompts, hygiene, completions, judgements, spec, recipe, out,
                                 force, push)
    m = version_manifest(Path(version))
    c = m["counts"]
    write_json(Path(out) / "binarize_report.json", {"version": version, **c})
    return StageReport(stage="binarize", count_in=c["prompts_after_hygiene"], count_out=c["pairs"], seconds=secs,
                       cached=cached, path=version,
                       notes={"version": Path(version).name, **c["splits"], "skipped": c["prompts_skipped"],
                              "unusable_judgements": c["unusable_judgements"], "inputs": m["inputs_hash"]})


def train_inputs(stage: str, recipe: Recipe, out: str, variant: str | None = None) -> str:
    """What a training stage is trained from: its block (a variant's: the block with its overrides,
    so adding a variant retrains no other), the data it reads (the run's version by inputs hash, a
    local dataset by its files, hf:<id> by its Hub commit; and the split) and, for dDPO from this
    run's dSFT, what dSFT was trained from."""
    from rlaif.core.records import content_hash
    from rlaif.training.common import stage_state
    from rlaif.training.datasets import source_key

    spec = stage_spec(stage, recipe, variant)
    split, eval_split = spec.splits()
    run_dataset = Path(out) / "dataset"
    data = [source_key(spec.dataset, s, run_dataset) for s in (split, eval_split) if s]
    upstream = (stage_state(Path(out) / "sft") or {}).get("inputs", "") if stage == "dpo" and spec.model is None else ""
    return content_hash(stage, spec, data, upstream)


def train_step(stage: str, recipe: Recipe, out: str, variant: str | None = None) -> StageReport:
    """dSFT (`stage` "sft") or dDPO ("dpo"; one `variant` of it), unless its output was trained
    from the same inputs."""
    inputs = train_inputs(stage, recipe, out, variant)
    state, cached, secs = call(train_task, out, stage, recipe, out, inputs, variant)
    metrics = state.get("metrics", {})
    notes = {k: round(metrics[k], 4) for k in ("train_loss", "train_samples_per_second") if k in metrics}
    if not cached and "reference_computed" in metrics:
        notes["reference"] = "computed" if metrics["reference_computed"] else "read"
    return StageReport(stage=f"train-{stage}" + (f"/{variant}" if variant else ""), count_in=int(metrics.get("rows", 0)),
                       count_out=int(metrics.get("steps", 0)), seconds=secs,
                       cached=cached, path=str(stage_dir(stage, out, variant)), notes={**notes, "inputs": inputs})


def train_steps(stage: str, recipe: Recipe, out: str) -> list[StageReport]:
    """A training stage, or each of its dDPO variants in turn (the first computes the reference pass)."""
    return [train_step(stage, recipe, out, v) for v in variants(stage, recipe)]


# ----------------------------------------------------------------------------- flows
def run_stages(recipe: Recipe, out: str, until: str = "train", judge_name: str | None = None,
               done: tuple[str, ...] = (), force: bool = False, push: bool = True, keep: dict | None = None,
               prompts: tuple[Manifest, HygieneReport, StageReport] | None = None) -> list[StageReport]:
    """The stages in order up to `until`. Stages named in `done` must be complete already (they
    are read, never computed). `prompts` replaces the prompts stage (the refresh flow's batches).
    `keep`, if given, receives the stages' manifests."""
    keep = {} if keep is None else keep
    rep = current().reporter
    if not recipe.makes_data:  # a recipe that only trains, on a dataset made elsewhere
        if until != "train":
            raise RlaifError(f"recipe {recipe.name!r} has no generators, so nothing to {until}: it only trains "
                             f"(`rlaif run` or `rlaif train`)")
        return train_stages(recipe, out)
    spec = recipe.judge_spec(judge_name)
    rep.stage("prompts")
    prompts, hy, r = prompts or prompts_step(recipe, out)
    reports = [r]
    if r.count_out == 0:
        raise no_usable_rows("prompts", r.count_in, None, f"hygiene removed {hy.counts}")
    rep.stage("generate")
    judge_engine = spec.engine_spec(recipe.engine)
    last = judge_engine.key if until != "generate" and judge_engine is not None else None
    completions, r = generate_step(prompts, recipe, out, last, require_done="generate" in done,
                                   judge=spec if until != "generate" else None)
    reports.append(r)
    keep.update(prompts=prompts, hygiene=hy, completions=completions)
    if r.count_out == 0:
        raise no_usable_rows("generate", r.count_in, r.failures)
    if until == "generate":
        return reports
    rep.stage(f"judge ({spec.name})")
    judgements, r = judge_step(prompts, completions, spec, recipe, out, require_done="judge" in done)
    reports.append(r)
    keep.update(judgements=judgements)
    if r.count_out == 0:
        n = r.notes
        raise no_usable_rows("judge", n["total"], r.failures, f"unparsed {n['unparsed']}, failed {n['failed']}")
    if until == "judge":
        return reports
    rep.stage("binarize")
    r = binarize_step(prompts, hy, completions, judgements, recipe.binarize_spec(spec.name), recipe, out, force, push)
    reports.append(r)
    if until == "binarize":
        return reports
    return reports + train_stages(recipe, out)


def train_stages(recipe: Recipe, out: str) -> list[StageReport]:
    """dSFT then dDPO, those the recipe has."""
    reports = []
    for stage in ("sft", "dpo"):
        if getattr(recipe.train, stage) is not None:
            current().reporter.stage(f"train-{stage}")
            reports += train_steps(stage, recipe, out)
    return reports


@flow(name="rlaif-generate", log_prints=False)
def generate_flow(recipe: Recipe, out: str) -> list[StageReport]:
    """Generation alone (`rlaif generate`)."""
    with session(recipe.seed):
        return run_stages(recipe, out, "generate")


@flow(name="rlaif-judge", log_prints=False)
def judge_flow(recipe: Recipe, out: str, judge_name: str | None = None) -> list[StageReport]:
    """Judging with one of the recipe's judges, on completions already generated (`rlaif judge`)."""
    with session(recipe.seed):
        return run_stages(recipe, out, "judge", judge_name, done=("generate",))


@flow(name="rlaif-binarize", log_prints=False)
def binarize_flow(recipe: Recipe, out: str, judge_name: str | None = None, force: bool = False,
                  push: bool = True) -> list[StageReport]:
    """Binarize one judge's verdicts and publish them as the next dataset version (`rlaif binarize`)."""
    with session(recipe.seed):
        return run_stages(recipe, out, "binarize", judge_name, done=("generate", "judge"), force=force, push=push)


@flow(name="rlaif-train", log_prints=False)
def train_flow(recipe: Recipe, out: str, stage: str) -> list[StageReport]:
    """One training stage on the run's dataset (`rlaif train sft|dpo`)."""
    with session(recipe.seed):
        current().reporter.stage(f"train-{stage}")
        return train_steps(stage, recipe, out)


@flow(name="rlaif-pipeline", log_prints=False)
def pipeline_flow(recipe: Recipe, out: str) -> list[StageReport]:
    """Every stage of a recipe into `out` (`rlaif run`); dSFT and dDPO when the recipe has them."""
    with session(recipe.seed):
        return run_stages(recipe, out, "train")


# ----------------------------------------------------------------------------- the summary
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

    stop = getattr(_reporter, "stop", None)
    if stop:
        stop()  # the last progress display ends before the table
    current_console = console()
    current_console.width = max(current_console.width, 110)
    current_console.print(summary_table(reports, out))

