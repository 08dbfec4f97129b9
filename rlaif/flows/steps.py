"""The pipeline's stages as the flow drives them: one object per stage, all with the same face.

    step.done_key(ctx)            a cache key when the stage has nothing to do (from its shards alone), else None
    step.run(ctx)                 compute what is left (a sharded stage: its jobs, on the run's executor)
    step.output(ctx)              its output when it is done (read from the shards' metadata)
    step.report(ctx, out, s, c)   its line of the run's summary

The driver (flows/pipeline.py `run_step`) runs every step the same way: inside one thin Prefect
task whose cache key is `done_key`, with retries for the stages that call an endpoint. Generation
and judging are sharded stages (runners/jobs.py): the step plans them once and hands the jobs to
the run's executor, in this process or on Ray, which runs any stage's jobs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.core.errors import RlaifError
from rlaif.core.records import content_hash
from rlaif.core.store import Manifest, write_json
from rlaif.runners.context import RunContext
from rlaif.flows.failures import Failures, completion_failures, judgement_failures
from rlaif.flows.report import StageReport
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.generation.stage import GenerateStage
from rlaif.judges.spec import JudgeSpec
from rlaif.judges.stage import JudgeStage, manifest_counts
from rlaif.prompts.hygiene import HygieneReport, prepare_prompts
from rlaif.preferences.versions import VersionInputs, publish, version_manifest
from rlaif.runners.jobs import Job

CACHE_VERSION = 3  # bump when what a step returns changes shape: old cache entries are then missed


def key(name: str, *parts: Any) -> str:
    return f"{name}-{content_hash(CACHE_VERSION, *parts)}"


def note_failures(ctx: RunContext, f: Failures) -> None:
    """One line as soon as a stage ends with failed rows; the table comes with the command's end."""
    if f.count:
        from rich.markup import escape

        first = f.first[0]
        ctx.reporter.note(f"[yellow]{f.count} rows failed[/] in {f.stage} ({f.retryable} to send again), "
                          f"first: model {escape(first.model)}, row {escape(first.row)}: {escape(first.error)}")


class Step:
    name = ""
    remote = False  # calls an endpoint: Prefect retries it with backoff for rows that failed transiently
    always_runs = False  # no cache: read every time (the prompt source may grow)
    error_model: str | None = None  # what a stage error names beside the stage

    @property
    def error_stage(self) -> str:
        return self.name

    def done_key(self, ctx: RunContext) -> str | None:
        return None

    def run(self, ctx: RunContext) -> Any:
        raise NotImplementedError

    def output(self, ctx: RunContext) -> Any:
        raise NotImplementedError

    def report(self, ctx: RunContext, out: Any, seconds: float, cached: bool) -> StageReport:
        raise NotImplementedError

    def retryable_rows(self, out: Any) -> int:
        return 0

    def first_engine(self, ctx: RunContext):
        return None


# ----------------------------------------------------------------------------- prompts
@dataclass(eq=False)
class PromptsStep(Step):
    name = "prompts"
    always_runs = True

    def run(self, ctx: RunContext) -> tuple[Manifest, HygieneReport]:
        p = ctx.recipe.prompts  # always read: the source may grow
        return prepare_prompts(p.source, p.split, p.limit, ctx.recipe.hygiene, ctx.store, ctx.recipe.shard_size,
                               ctx.reporter)

    def report(self, ctx: RunContext, out: Any, seconds: float, cached: bool) -> StageReport:
        manifest, hygiene_report = out
        return StageReport(stage="prompts", count_in=hygiene_report.prompts_in, count_out=hygiene_report.kept, seconds=seconds,
                           notes={"source": ctx.recipe.prompts.source, "chunks": len(manifest.shards),
                                  **({"removed": hygiene_report.counts} if hygiene_report.removed else {})},
                           path=str(Path(ctx.out) / manifest.stage))


# ----------------------------------------------------------------------------- sharded stages
@dataclass(eq=False)
class ShardedStep(Step):
    """A stage made of shards: planned once, its jobs run by the context's executor."""

    jobs: list[Job] | None = field(default=None, init=False, repr=False)

    def stage(self, ctx: RunContext):
        raise NotImplementedError

    def plan(self, ctx: RunContext) -> list[Job]:
        if self.jobs is None:
            self.jobs = self.stage(ctx).plan(ctx.store)
        return self.jobs

    def done_key(self, ctx: RunContext) -> str | None:
        if any(j.todo for j in self.plan(ctx)):
            return None
        return key(self.name, self.identity(ctx), self.stage(ctx).manifest(self.plan(ctx)).hash)

    def identity(self, ctx: RunContext) -> Any:
        """What the stage's output depends on beside its shards."""
        raise NotImplementedError

    def output(self, ctx: RunContext) -> Manifest:
        stage = self.stage(ctx)
        for line in stage.notes(self.plan(ctx)):
            ctx.reporter.note(line)
        return stage.manifest(self.plan(ctx))

    def run(self, ctx: RunContext) -> Manifest:
        manifest = ctx.executor.run(self.stage(ctx), ctx.store, ctx.reporter, jobs=self.plan(ctx),
                                    follower=self.follower(ctx))
        self.jobs = None  # written since: the next look plans again
        return manifest

    def follower(self, ctx: RunContext):
        return None

    def retryable_rows(self, out: Manifest) -> int:
        return out.total("retryable")

    def first_engine(self, ctx: RunContext):
        from rlaif.runners.local import LocalExecutor

        return LocalExecutor(ctx.pool).first_engine(self.stage(ctx), ctx.store, jobs=self.plan(ctx))


@dataclass(eq=False)
class GenerateStep(ShardedStep):
    prompts: Manifest = None  # type: ignore[assignment]
    judge: JudgeSpec | None = None  # judged next: its engine goes last (and, on Ray, it judges chunk by chunk)
    remote: bool = False  # a member calls an endpoint
    name = "generate"

    def stage(self, ctx: RunContext) -> GenerateStage:
        r = ctx.recipe
        judge_engine = self.judge.engine_spec(r.engine) if self.judge is not None else None
        return GenerateStage(self.prompts, r.generators, r.engine, r.models_per_prompt, r.seed,
                             last=judge_engine.key if judge_engine is not None else None)

    def identity(self, ctx: RunContext) -> Any:
        r = ctx.recipe
        return self.prompts.hash, [(g.name, g.settings_hash()) for g in r.generators], r.models_per_prompt, r.seed

    def follower(self, ctx: RunContext):
        return JudgeStage(None, self.judge, ctx.recipe.engine, ctx.recipe.seed) if self.judge is not None else None

    def report(self, ctx: RunContext, m: Manifest, seconds: float, cached: bool) -> StageReport:
        failures = completion_failures(ctx.store, m)
        note_failures(ctx, failures)
        per_model = {g.name: sum(s.ok for s in m.shards if s.name == g.name) for g in ctx.recipe.generators}
        notes = {"failed": m.total("failed"), "retried next run": m.total("retryable"), "per_model": per_model,
                 "output_tokens": m.counts().get("output_tokens", 0), **executor_notes(ctx)}
        return StageReport(stage="generate", count_in=m.total("rows"), count_out=m.total("ok"), seconds=seconds,
                           cached=cached, notes=notes, path=str(Path(ctx.out) / COMPLETIONS), failures=failures)


def generate_step(ctx: RunContext, prompts: Manifest, judge: JudgeSpec | None = None) -> GenerateStep:
    return GenerateStep(prompts=prompts, judge=judge, remote=any(g.endpoint is not None for g in ctx.recipe.generators))


class OnJudge:
    """A step about one judge (`spec`): Prefect retries it when the judge calls an endpoint, and its
    errors name the judge."""

    spec: JudgeSpec

    @property
    def remote(self) -> bool:  # type: ignore[override]
        return self.spec is not None and self.spec.endpoint is not None

    @property
    def error_model(self) -> str | None:  # type: ignore[override]
        return self.spec.name


@dataclass(eq=False)
class JudgeStep(OnJudge, ShardedStep):
    completions: Manifest = None  # type: ignore[assignment]
    spec: JudgeSpec = None  # type: ignore[assignment]
    name = "judge"

    def stage(self, ctx: RunContext) -> JudgeStage:
        return JudgeStage(self.completions, self.spec, ctx.recipe.engine, ctx.recipe.seed)

    def identity(self, ctx: RunContext) -> Any:
        return self.spec.name, self.spec.settings_hash(), self.completions.hash

    def run(self, ctx: RunContext) -> Manifest:
        from rich.markup import escape

        manifest = super().run(ctx)
        for name in self.stage(ctx).write_report(ctx.store, manifest):
            ctx.reporter.note(f"[yellow]judge {escape(self.spec.name)}: answered as {escape(name)}[/], which earlier runs of "
                              f"this judge never did (judgements/{self.spec.name}/report.json lists every identity)")
        return manifest

    def output(self, ctx: RunContext) -> Manifest:
        manifest = super().output(ctx)
        if not (Path(ctx.out) / self.stage(ctx).stage / "report.json").exists():
            self.stage(ctx).write_report(ctx.store, manifest)
        return manifest

    def report(self, ctx: RunContext, m: Manifest, seconds: float, cached: bool) -> StageReport:
        counts = manifest_counts(m)  # parsed / retried / unparsed / failed
        failures = judgement_failures(ctx.store, m, self.spec.pairwise)
        note_failures(ctx, failures)
        return StageReport(stage="judge", count_in=self.completions.total("rows"), count_out=counts["parsed"],
                           seconds=seconds, cached=cached,
                           notes={"judge": self.spec.name, "kind": self.spec.kind, **counts, **executor_notes(ctx)},
                           path=str(Path(ctx.out) / m.stage), failures=failures)


@dataclass(eq=False)
class SentinelStep(OnJudge, Step):
    """The judge's sentinel check (judges/sentinels.py) for the judgements a run is about to publish:
    found done when this very check exists, else the sentinels are judged now."""

    prompts: Manifest = None  # type: ignore[assignment]
    completions: Manifest = None  # type: ignore[assignment]
    judgements: Manifest = None  # type: ignore[assignment]
    spec: JudgeSpec = None  # type: ignore[assignment]
    name = "sentinels"

    def check_key(self, ctx: RunContext) -> str | None:
        from rlaif.judges import sentinels

        have = sentinels.read_set(ctx.out)
        if have is None or len(have.prompts) < self.spec.sentinels:
            return None  # to draw first
        return sentinels.check_key(self.spec, self.judgements, have.take(self.spec.sentinels))

    def done_key(self, ctx: RunContext) -> str | None:
        from rlaif.judges import sentinels

        k = self.check_key(ctx)
        return key("sentinels", k) if k is not None and sentinels.find(ctx.out, self.spec.name, k) else None

    def output(self, ctx: RunContext) -> dict:
        from rlaif.judges import sentinels

        return sentinels.find(ctx.out, self.spec.name, self.check_key(ctx)).model_dump(mode="json")

    def run(self, ctx: RunContext) -> dict:
        from rlaif.judges import sentinels

        r = ctx.recipe
        chosen = sentinels.draw(ctx.store, self.prompts, self.completions, self.spec.sentinels, r.seed)
        k = sentinels.check_key(self.spec, self.judgements, chosen)
        if (done := sentinels.find(ctx.out, self.spec.name, k)) is not None:
            return done.model_dump(mode="json")
        engine_spec = self.spec.engine_spec(r.engine)
        engine = ctx.pool.get(engine_spec, ctx.store.root) if engine_spec is not None else None
        return sentinels.run_check(ctx.store, self.spec, engine, chosen, k, r.seed,
                                   r.binarize_spec(self.spec.name).score).model_dump(mode="json")

    def report(self, ctx: RunContext, check: dict, seconds: float, cached: bool) -> StageReport:
        from rlaif.judges.sentinels import FOLDER

        d = check.get("drift") or {}
        notes = {"judge": self.spec.name, "check": check["number"], "served": check["served"],
                 **{k: d.get(k) for k in ("against", "flipped", "pairs", "flip_rate", "score_shift", "spearman",
                                          "kappa")}, "max_drift": self.spec.max_drift}
        return StageReport(stage="sentinels", count_in=check["completions"], count_out=check["parsed"],
                           seconds=seconds, cached=cached, notes=notes,
                           path=str(Path(ctx.out) / FOLDER / self.spec.name))


def executor_notes(ctx: RunContext) -> dict[str, Any]:
    """What the Ray executor did since the last report (shards judged beside generation count there)."""
    notes = ctx.executor.notes() if ctx.executor is not None and hasattr(ctx.executor, "notes") else {}
    return {"ray": notes} if notes else {}


# ----------------------------------------------------------------------------- a dataset version
@dataclass(eq=False)
class PublishStep(Step):
    inputs: VersionInputs = None  # type: ignore[assignment]
    force: bool = False
    push: bool = True
    name = "publish"
    error_stage = "binarize"  # type: ignore[assignment]

    @property
    def error_model(self) -> str | None:  # type: ignore[override]
        return self.inputs.spec.judge

    def done_key(self, ctx: RunContext) -> str | None:
        from rlaif.preferences.versions import latest_version

        if self.force or (self.inputs.spec.push_to_hub and self.push):
            return None  # asked to write or push: always run
        h = self.inputs.hash()
        latest = latest_version(ctx.out)
        if latest is None or not (latest / "manifest.json").exists() or version_manifest(latest).get("inputs_hash") != h:
            return None
        link = Path(ctx.out) / "dataset"
        if not link.exists() or link.resolve() != latest.resolve():
            return None  # the pointer moved (a judge swap published since): publish takes it back
        return key("publish", h, latest.name)

    def output(self, ctx: RunContext) -> str:
        from rlaif.preferences.versions import latest_version

        return str(latest_version(ctx.out))

    def run(self, ctx: RunContext) -> str:
        return str(publish(ctx.store, ctx.recipe.model_dump(mode="json"), self.inputs, self.force, self.push,
                           ctx.reporter))

    def report(self, ctx: RunContext, version: str, seconds: float, cached: bool) -> StageReport:
        m = version_manifest(Path(version))
        c = m["counts"]
        write_json(Path(ctx.out) / "binarize_report.json", {"version": version, **c})
        return StageReport(stage="binarize", count_in=c["prompts_after_hygiene"], count_out=c["pairs"],
                           seconds=seconds, cached=cached, path=version,
                           notes={"version": Path(version).name, **c["splits"], "skipped": c["prompts_skipped"],
                                  "unusable_judgements": c["unusable_judgements"], "inputs": m["inputs_hash"]})


# ----------------------------------------------------------------------------- training
def variants(stage: str, recipe: Any) -> list[str | None]:
    """What a training stage trains: itself ([None]), or each dDPO variant by name."""
    spec = getattr(recipe.train, stage)
    return [name for name, _ in spec.variant_specs()] if stage == "dpo" and spec.variants else [None]


def stage_spec(stage: str, recipe: Any, variant: str | None = None) -> Any:
    spec = getattr(recipe.train, stage)
    return spec if variant is None else dict(spec.variant_specs())[variant]


def stage_dir(stage: str, out: str | Path, variant: str | None = None) -> Path:
    return Path(out) / stage / variant if variant else Path(out) / stage


def train_inputs(stage: str, recipe: Any, out: str, variant: str | None = None) -> str:
    """What a training stage is trained from: its block (a variant's: the block with its overrides,
    so adding a variant retrains no other), the data it reads (the run's version by inputs hash, a
    local dataset by its files, hf:<id> by its Hub commit; and the split) and, for dDPO from this
    run's dSFT, what dSFT was trained from."""
    from rlaif.training.common import stage_state
    from rlaif.training.datasets import source_key

    spec = stage_spec(stage, recipe, variant)
    split, eval_split = spec.splits()
    run_dataset = Path(out) / "dataset"
    data = [source_key(spec.dataset, s, run_dataset) for s in (split, eval_split) if s]
    upstream = (stage_state(Path(out) / "sft") or {}).get("inputs", "") if stage == "dpo" and spec.model is None else ""
    # keep_checkpoints says what to keep after training, not what is trained
    return content_hash(stage, spec.model_copy(update={"keep_checkpoints": None}), data, upstream)


@dataclass(eq=False)
class TrainStep(Step):
    """dSFT ("sft") or dDPO ("dpo"; one `variant` of a sweep), unless its output was trained from the same inputs."""

    stage: str = "sft"
    inputs: str = ""  # train_inputs(...)
    variant: str | None = None  # a dDPO variant: into dpo/<variant>/
    name = "train"

    @property
    def error_model(self) -> str | None:  # type: ignore[override]
        return None

    def path(self, ctx: RunContext) -> Path:
        return stage_dir(self.stage, ctx.out, self.variant)

    def done_key(self, ctx: RunContext) -> str | None:
        from rlaif.training.common import is_trained

        if not is_trained(self.path(ctx), self.inputs):
            return None
        return key("train", self.stage, self.variant or "", self.inputs)

    def output(self, ctx: RunContext) -> dict:
        from rlaif.training.common import stage_state

        return stage_state(self.path(ctx))

    def run(self, ctx: RunContext) -> dict:
        return train(ctx, self.stage, self.inputs, self.variant)

    def report(self, ctx: RunContext, state: dict, seconds: float, cached: bool) -> StageReport:
        metrics = state.get("metrics", {})
        notes = {k: round(metrics[k], 4) for k in ("train_loss", "train_samples_per_second") if k in metrics}
        if not cached and "reference_computed" in metrics:
            notes["reference"] = "computed" if metrics["reference_computed"] else "read"
        return StageReport(stage=f"train-{self.stage}" + (f"/{self.variant}" if self.variant else ""),
                           count_in=int(metrics.get("rows", 0)), count_out=int(metrics.get("steps", 0)),
                           seconds=seconds, cached=cached, path=str(self.path(ctx)),
                           notes={**notes, "inputs": self.inputs})


def train(ctx: RunContext, stage: str, inputs: str, variant: str | None = None) -> dict:
    """Train one stage (or one dDPO variant) unless its own state says it was trained from `inputs`
    (whatever Prefect's cache holds). Every process of an `accelerate launch` calls this; only rank
    0 has a flow."""
    from rlaif.core.errors import stage_errors
    from rlaif.runners.context import free_engines
    from rlaif.training.common import drop_finished_checkpoints, is_trained, mark_trained, stage_state

    spec = stage_spec(stage, ctx.recipe, variant)
    path = stage_dir(stage, ctx.out, variant)
    if is_trained(path, inputs):
        drop_finished_checkpoints(path, spec)  # left by a try stopped between marking and removing them
        return stage_state(path)
    with stage_errors(f"train-{stage}" + (f"-{variant}" if variant else ""), spec.model):
        free_engines(ctx)  # the GPU to the trainer alone (a cluster's kept workers too)
        dataset = Path(ctx.out) / "dataset"
        if stage == "sft":
            from rlaif.training.sft import train_sft

            metrics = train_sft(dataset, spec, path, inputs=inputs, reporter=ctx.reporter)
        else:
            from rlaif.training.dpo import train_dpo

            metrics = train_dpo(dataset, spec, path, inputs=inputs, reporter=ctx.reporter, run=ctx.out)
        mark_trained(path, inputs, metrics, start_model=metrics.get("start_model"),
                     resumed_from=metrics.get("resumed_from"),
                     **({"ref_model": metrics["ref_model"]} if metrics.get("ref_model") else {}))
        drop_finished_checkpoints(path, spec)
    return stage_state(path)


def must_be_done(step: Step, ctx: RunContext, what: str) -> None:
    """A stage the command only reads (`rlaif judge` never generates): an error when it has work."""
    if step.done_key(ctx) is None:
        raise RlaifError(what)
