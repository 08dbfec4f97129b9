"""The pipeline as Prefect flows: prompts -> generate -> judge -> binarize (a dataset version) -> dDPO.

Each task makes ONE call to a stage function; the logic lives in the stages. Tasks are cached by
the content hashes of the records they read and the settings of their own stage (flows/caching.py),
with results kept as JSON in `<run dir>/.prefect/results/`. So a rerun with nothing changed
computes nothing, and a change to one judge setting reruns judging and what follows only. The
stages also write their records to the run directory shard by shard and skip shards already
there: the run directory is the source of truth, and a cache entry is only used while what it
wrote is still there. Tasks that call a remote endpoint are retried with exponential backoff.

Flows: `generate_flow`, `judge_flow`, `binarize_flow` (binarize and publish a dataset version),
each running its stage after the (cached) ones before it, and `pipeline_flow`, all of them
through dSFT and dDPO (training is the last stage, so its flow is the pipeline). Without PREFECT_API_URL they run in Prefect's ephemeral mode: no server to start.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from flows.caching import (CACHED, StageError, generate_key, judge_key, publish_key, result_storage, stage_errors,
                           train_key)
from flows.recipe import PromptSource, Recipe
from generation.ensemble import generate
from generation.prompt_sets import load_prompts
from generation.records import Completion, Judgement, PairJudgement, Prompt
from generation.store import RunStore
from judges.binarize import BinarizeSpec
from generation.hygiene import HygieneSpec
from judges.dataset import publish_version
from judges.spec import JudgeSpec
from judges.stage import judge_counts, run_judge
from training.dpo import DPOSpec, train_dpo
from training.sft import SFTSpec, train_sft

console = Console(stderr=True)
STAGES = ("generate", "judge", "binarize", "train")
RETRY_MARKER = ".prefect/generate-has-retryable-rows"  # set: the next run regenerates, not the cache


class StageReport(BaseModel):
    stage: str
    count_in: int
    count_out: int
    seconds: float
    cached: bool = False  # served from Prefect's cache: nothing recomputed
    notes: dict[str, Any] = Field(default_factory=dict)
    path: str = ""


# ----------------------------------------------------------------------------- tasks: one stage call each
@task(name="load-prompts", cache_policy=NO_CACHE, persist_result=False)
def prompts_task(source: PromptSource) -> list[Prompt]:
    return load_prompts(source.source, source.limit, source.split)  # always read: the source may grow


@task(name="generate", cache_key_fn=generate_key, **CACHED)
def generate_task(prompts: list[Prompt], recipe: Recipe, out: str) -> list[Completion]:
    with stage_errors("generate"):
        completions = generate(prompts, recipe.generators, RunStore(out), recipe.engine, recipe.shard_size,
                               recipe.seed, on_model=_say, models_per_prompt=recipe.models_per_prompt)
    _retry_transient_rows("generate", completions)
    return completions


@task(name="judge", cache_key_fn=judge_key, **CACHED)
def judge_task(prompts: list[Prompt], completions: list[Completion], spec: JudgeSpec, recipe: Recipe,
               out: str) -> list[Judgement] | list[PairJudgement]:
    with stage_errors("judge", spec.name):
        return run_judge(prompts, completions, spec, RunStore(out), recipe.engine, recipe.shard_size, recipe.seed)


@task(name="publish", cache_key_fn=publish_key, **CACHED)
def publish_task(prompts: list[Prompt], completions: list[Completion], judgements: list[Judgement] | list[PairJudgement],
                 spec: BinarizeSpec, hygiene: HygieneSpec, recipe_info: dict, out: str) -> str:
    with stage_errors("binarize", spec.judge):
        return str(publish_version(out, recipe_info, prompts, completions, judgements, spec, hygiene))


@task(name="train", cache_key_fn=train_key, **CACHED)
def train_task(spec: SFTSpec | DPOSpec, dataset: str, path: str, dataset_hash: str) -> dict[str, float]:
    stage = "train-sft" if isinstance(spec, SFTSpec) else "train-dpo"
    with stage_errors(stage, spec.model):
        train = train_sft if isinstance(spec, SFTSpec) else train_dpo
        return {k: float(v) for k, v in train(Path(dataset), spec, Path(path)).items() if isinstance(v, (int, float))}


def _say(name: str, msg: str) -> None:
    console.print(f"  {name}: {msg}")


def _retry_transient_rows(stage: str, records: list[Completion]) -> None:
    """Rows that failed transiently (HTTP 429/5xx, timeouts) make the task fail while Prefect
    retries are left, so it runs again after a backoff and the stage re-sends only those rows.
    On the last try the rows are kept as failed records, and the next run sends them again."""
    ctx = TaskRunContext.get()
    bad = [c for c in records if c.retryable]
    if bad and ctx and ctx.task_run.run_count <= ctx.task.retries:
        raise StageError(stage, bad[0].model, bad[0].prompt_id, f"{len(bad)} rows failed transiently: {bad[0].error}")


# ----------------------------------------------------------------------------- running a task
def call(t, out: str, *args: Any, refresh: bool = False, remote: bool = False, recipe: Recipe | None = None):
    """Run a task with its results in the run directory; returns (value, cached, seconds).

    `refresh`: recompute and overwrite the cache entry (what it wrote is gone from the run dir).
    `remote`: the stage calls an endpoint, so retry with exponential backoff from the recipe.
    """
    opts: dict[str, Any] = dict(result_storage=result_storage(out), refresh_cache=refresh)
    if remote and recipe is not None:
        f = recipe.flow
        opts.update(retries=f.retries, retry_delay_seconds=exponential_backoff(backoff_factor=f.retry_delay_seconds),
                    retry_jitter_factor=f.retry_jitter_factor)
    start = time.perf_counter()
    state = t.with_options(**opts)(*args, return_state=True)
    value = state.result()  # a failed task raises its StageError here
    return value, state.name == "Cached", time.perf_counter() - start


def _has_endpoint(*specs: Any) -> bool:
    return any(getattr(s, "endpoint", None) is not None for s in specs)


def generate_step(prompts: list[Prompt], recipe: Recipe, out: str) -> tuple[list[Completion], StageReport]:
    marker = Path(out) / RETRY_MARKER
    refresh = marker.exists() or not (Path(out) / "completions").is_dir()
    completions, cached, secs = call(generate_task, out, prompts, recipe, out, refresh=refresh,
                                     remote=_has_endpoint(*recipe.generators), recipe=recipe)
    ok = [c for c in completions if c.ok]
    failed = [c for c in completions if not c.ok]
    for c in failed[:10]:
        console.print(f"  [yellow]failed[/] stage generate, model {c.model}, row {c.prompt_id}: {c.error}")
    if any(c.retryable for c in failed):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    elif marker.exists():
        marker.unlink()
    notes = {"failed": len(failed), "retried next run": sum(c.retryable for c in failed),
             "per_model": {g.name: sum(1 for c in ok if c.model == g.name) for g in recipe.generators},
             "output_tokens": sum(c.output_tokens for c in ok)}
    return completions, StageReport(stage="generate", count_in=len(completions), count_out=len(ok), seconds=secs,
                                    cached=cached, notes=notes, path=str(Path(out) / "completions"))


def judge_step(prompts: list[Prompt], completions: list[Completion], spec: JudgeSpec, recipe: Recipe,
              out: str) -> tuple[list[Judgement], StageReport]:
    path = Path(out) / "judgements" / spec.name
    judgements, cached, secs = call(judge_task, out, prompts, completions, spec, recipe, out,
                                    refresh=not path.is_dir(), remote=_has_endpoint(spec), recipe=recipe)
    counts = judge_counts(judgements)  # parsed / retried / unparsed / failed
    return judgements, StageReport(stage="judge", count_in=len(completions), count_out=counts["parsed"],
                                   seconds=secs, cached=cached, notes={"judge": spec.name, "kind": spec.kind, **counts},
                                   path=str(path))


def binarize_step(prompts: list[Prompt], completions: list[Completion], judgements: list[Judgement],
                  spec: BinarizeSpec, recipe: Recipe, out: str) -> StageReport:
    """Binarize and publish a dataset version; `<out>/dataset` points at it."""
    args = (publish_task, out, prompts, completions, judgements, spec, recipe.hygiene, recipe.model_dump(mode="json"), out)
    version, cached, secs = call(*args, refresh=not (Path(out) / "dataset").exists())
    if Path(version) != (Path(out) / "dataset").resolve():  # a later publish (a judge swap) took the pointer
        version, cached, secs = call(*args, refresh=True)
    m = json.loads((Path(version) / "manifest.json").read_text())
    c = m["counts"]
    RunStore(out).write_json("binarize_report.json", {"version": version, **c})
    return StageReport(stage="binarize", count_in=len(prompts), count_out=c["pairs"], seconds=secs, cached=cached,
                       path=version, notes={"version": Path(version).name, **c["splits"], "skipped": c["prompts_skipped"],
                                            "unusable_judgements": c["unusable_judgements"], "inputs": m["inputs_hash"]})


def train_step(stage: str, spec: SFTSpec | DPOSpec, out: str, dataset: StageReport, upstream: str = "") -> StageReport:
    """dSFT (`stage` "sft") or dDPO ("dpo"); `upstream` names what the start model depends on, so a
    retrained dSFT model retrains dDPO too."""
    path = Path(out) / stage
    rows = dataset.notes["train_sft" if stage == "sft" else "train_prefs"]
    metrics, cached, secs = call(train_task, out, spec, str(Path(out) / "dataset"), str(path),
                                 dataset.notes["inputs"] + upstream, refresh=not (path / "model.safetensors").exists())
    notes = {k: round(metrics[k], 4) for k in ("train_loss", "train_samples_per_second") if k in metrics}
    return StageReport(stage=f"train-{stage}", count_in=rows, count_out=int(metrics.get("steps", 0)),
                       seconds=secs, cached=cached, path=str(path), notes=notes)


# ----------------------------------------------------------------------------- flows
def run_stages(recipe: Recipe, out: str, until: str = "train", judge_name: str | None = None,
               keep: dict | None = None) -> list[StageReport]:
    """The stages in order up to `until`; the ones before it come from the cache when unchanged.
    `keep`, if given, receives the records (prompts, completions, judgements)."""
    keep = {} if keep is None else keep
    start = time.perf_counter()
    prompts = prompts_task(recipe.prompts)
    reports = [StageReport(stage="prompts", count_in=len(prompts), count_out=len(prompts),
                           seconds=time.perf_counter() - start, notes={"source": recipe.prompts.source})]
    completions, r = generate_step(prompts, recipe, out)
    reports.append(r)
    keep.update(prompts=prompts, completions=completions)
    if until == "generate":
        return reports
    spec = recipe.judge_spec(judge_name)
    judgements, r = judge_step(prompts, completions, spec, recipe, out)
    reports.append(r)
    keep.update(judgements=judgements)
    if until == "judge":
        return reports
    bspec = recipe.binarize.model_copy(update={"judge": spec.name})
    r = binarize_step(prompts, completions, judgements, bspec, recipe, out)
    reports.append(r)
    if until == "binarize" or (recipe.train.dpo is None and recipe.train.sft is None):
        return reports
    if r.notes["train_prefs"] == 0:
        console.print("[yellow]no training pairs: training skipped (see binarize_report.json)")
        return reports
    upstream = ""
    if recipe.train.sft is not None:
        reports.append(train_step("sft", recipe.train.sft, out, r))
        upstream = json.dumps(reports[-1].notes, sort_keys=True) + recipe.train.sft.model_dump_json()
    if recipe.train.dpo is not None:
        reports.append(train_step("dpo", recipe.train.dpo, out, r, upstream))
    return reports


@flow(name="rlaif-generate", log_prints=False)
def generate_flow(recipe: Recipe, out: str) -> list[StageReport]:
    """Generation alone (`rlaif generate`)."""
    return run_stages(recipe, out, "generate")


@flow(name="rlaif-judge", log_prints=False)
def judge_flow(recipe: Recipe, out: str, judge_name: str | None = None) -> list[StageReport]:
    """Judging with one of the recipe's judges, on the (cached) completions."""
    return run_stages(recipe, out, "judge", judge_name)


@flow(name="rlaif-binarize", log_prints=False)
def binarize_flow(recipe: Recipe, out: str, judge_name: str | None = None) -> list[StageReport]:
    """Binarize one judge's verdicts and publish them as the next dataset version."""
    return run_stages(recipe, out, "binarize", judge_name)


@flow(name="rlaif-pipeline", log_prints=False)
def pipeline_flow(recipe: Recipe, out: str) -> list[StageReport]:
    """Every stage of a recipe into `out` (`rlaif run`); dDPO when the recipe has `train.dpo`."""
    return run_stages(recipe, out, "train")



def run(recipe: Recipe, out: str | Path, only_generate: bool = False) -> list[StageReport]:
    """Run the flow, then write and print the summary."""
    out = str(Path(out).resolve())
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "recipe.json").write_text(recipe.model_dump_json(indent=2))
    reports = (generate_flow if only_generate else pipeline_flow)(recipe, out)
    write_summary(reports, out)
    return reports


def write_summary(reports: list[StageReport], out: str, name: str = "summary.json") -> None:
    (Path(out) / name).write_text(json.dumps([r.model_dump() for r in reports], indent=2))
    print_summary(reports, out)


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def print_summary(reports: list[StageReport], out: str) -> None:
    table = Table(title=f"rlaif run: {out}")
    for col in ("stage", "in", "out", "seconds", "notes", "written to"):
        table.add_column(col)
    for r in reports:
        notes = "\n".join(f"{k}: {_fmt(v)}" for k, v in r.notes.items())
        secs = f"{r.seconds:.1f}" + (" (cached)" if r.cached else "")
        table.add_row(r.stage, str(r.count_in), str(r.count_out), secs, notes,
                      str(Path(r.path).relative_to(out)) if r.path.startswith(out) else r.path)
    Console(width=max(Console().width, 110)).print(table)
