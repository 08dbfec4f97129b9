"""The pipeline as one Prefect flow: prompts -> generate -> judge -> binarize -> dSFT -> dDPO.

Every task here is a thin wrapper around a stage function; the logic lives in the stages. The
stages write their records to the run directory as they finish and skip shards already there, so
Prefect's own result caching is off (NO_CACHE): the run directory is the source of truth, and a
rerun, a second judge or a crashed run resumes from it. Without PREFECT_API_URL the flow runs in
Prefect's ephemeral mode, so a user starts no server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from flows.recipe import Recipe
from generation.ensemble import generate
from generation.prompt_sets import load_prompts
from generation.records import Completion, Judgement, Prompt
from generation.store import RunStore
from judges.dataset import publish_version
from judges.stage import judge_counts, run_judge
from training.dpo import train_dpo
from training.sft import train_sft

console = Console(stderr=True)


class StageReport(BaseModel):
    stage: str
    count_in: int
    count_out: int
    seconds: float
    notes: dict[str, Any] = Field(default_factory=dict)
    path: str = ""


def _timed(stage: str):
    console.rule(f"[bold]{stage}")
    return time.perf_counter()


@task(name="load-prompts", cache_policy=NO_CACHE, persist_result=False)
def prompts_task(recipe: Recipe) -> tuple[list[Prompt], StageReport]:
    t = _timed("prompts")
    prompts = load_prompts(recipe.prompts.source, recipe.prompts.limit, recipe.prompts.split)
    return prompts, StageReport(stage="prompts", count_in=len(prompts), count_out=len(prompts),
                                seconds=time.perf_counter() - t, notes={"source": recipe.prompts.source})


@task(name="generate", cache_policy=NO_CACHE, persist_result=False)
def generate_task(prompts: list[Prompt], recipe: Recipe, out: str) -> tuple[list[Completion], StageReport]:
    t = _timed("generate")
    store = RunStore(out)
    completions = generate(prompts, recipe.generators, store, recipe.engine, recipe.shard_size, recipe.seed,
                           on_model=lambda name, msg: console.print(f"  {name}: {msg}"),
                           models_per_prompt=recipe.models_per_prompt)
    ok = [c for c in completions if c.ok]
    failed = [c for c in completions if not c.ok]
    for c in failed[:10]:
        console.print(f"  [yellow]failed[/] {c.model} / {c.prompt_id}: {c.error}")
    per_model = {g.name: sum(1 for c in ok if c.model == g.name) for g in recipe.generators}
    notes = {"failed": len(failed), "retried next run": sum(c.retryable for c in failed),
             "per_model": per_model, "output_tokens": sum(c.output_tokens for c in ok)}
    return completions, StageReport(
        stage="generate", count_in=len(completions), count_out=len(ok),
        seconds=time.perf_counter() - t, path=str(Path(out) / "completions"), notes=notes)


@task(name="judge", cache_policy=NO_CACHE, persist_result=False)
def judge_task(prompts: list[Prompt], completions: list[Completion], recipe: Recipe,
               out: str, judge_name: str | None = None) -> tuple[list[Judgement], StageReport]:
    spec = recipe.judge_spec(judge_name)
    t = _timed(f"judge ({spec.name}, {spec.kind})")
    judgements = run_judge(prompts, completions, spec, RunStore(out), recipe.engine, recipe.shard_size, recipe.seed)
    counts = judge_counts(judgements)
    return judgements, StageReport(stage=f"judge {spec.name}", count_in=len(completions), count_out=counts["parsed"],
                                   seconds=time.perf_counter() - t, notes=counts,
                                   path=str(Path(out) / "judgements" / spec.name))


@task(name="binarize", cache_policy=NO_CACHE, persist_result=False)
def binarize_task(prompts: list[Prompt], completions: list[Completion], judgements: list[Judgement],
                  recipe: Recipe, out: str) -> StageReport:
    t = _timed("binarize")
    version = publish_version(out, recipe.model_dump(mode="json"), prompts, completions, judgements,
                              recipe.binarize, recipe.hygiene)
    m = json.loads((version / "manifest.json").read_text())
    c = m["counts"]
    RunStore(out).write_json("binarize_report.json", {"version": str(version), **c, "dropped": m["dropped"]})
    return StageReport(stage="binarize", count_in=len(prompts), count_out=c["pairs"],
                       seconds=time.perf_counter() - t, path=str(Path(out) / "dataset"),
                       notes={"version": version.name, "train_prefs": c["splits"]["train_prefs"],
                              "test_prefs": c["splits"]["test_prefs"], "hygiene_removed": c["hygiene_removed"],
                              "skipped": c["prompts_skipped"], "unusable_judgements": c["unusable_judgements"]})


@task(name="train-sft", cache_policy=NO_CACHE, persist_result=False)
def sft_task(recipe: Recipe, out: str, train_rows: int) -> StageReport:
    t = _timed("train dSFT")
    path = Path(out) / "sft"
    metrics = train_sft(Path(out) / "dataset", recipe.train.sft, path)
    notes = {k: round(float(metrics[k]), 4) for k in ("train_loss", "train_samples_per_second") if k in metrics}
    return StageReport(stage="train-sft", count_in=train_rows, count_out=int(metrics.get("steps", 0)),
                       seconds=time.perf_counter() - t, path=str(path), notes=notes)


@task(name="train-dpo", cache_policy=NO_CACHE, persist_result=False)
def dpo_task(recipe: Recipe, out: str, train_pairs: int) -> StageReport:
    t = _timed("train dDPO")
    path = Path(out) / "dpo"
    metrics = train_dpo(Path(out) / "dataset", recipe.train.dpo, path)
    notes = {k: round(float(metrics[k]), 4) for k in ("train_loss", "train_samples_per_second") if k in metrics}
    return StageReport(stage="train-dpo", count_in=train_pairs, count_out=int(metrics.get("steps", 0)),
                       seconds=time.perf_counter() - t, path=str(path), notes=notes)


@flow(name="rlaif-pipeline", log_prints=True)
def pipeline_flow(recipe: Recipe, out: str) -> list[StageReport]:
    """Run every stage of a recipe into `out`; returns one report per stage."""
    reports = []
    prompts, r = prompts_task(recipe)
    reports.append(r)
    completions, r = generate_task(prompts, recipe, out)
    reports.append(r)
    judgements, r = judge_task(prompts, completions, recipe, out)
    reports.append(r)
    r = binarize_task(prompts, completions, judgements, recipe, out)
    reports.append(r)
    if r.notes["train_prefs"] == 0 and (recipe.train.sft or recipe.train.dpo):
        console.print("[yellow]no training pairs: training skipped (see binarize_report.json)")
    else:
        if recipe.train.sft is not None:
            reports.append(sft_task(recipe, out, r.notes["train_prefs"]))
        if recipe.train.dpo is not None:
            reports.append(dpo_task(recipe, out, r.notes["train_prefs"]))
    return reports


@flow(name="rlaif-generate", log_prints=True)
def generate_flow(recipe: Recipe, out: str) -> list[StageReport]:
    """The generation stage alone (`rlaif generate`)."""
    prompts, r = prompts_task(recipe)
    _, g = generate_task(prompts, recipe, out)
    return [r, g]


def run(recipe: Recipe, out: str | Path, only_generate: bool = False) -> list[StageReport]:
    """Run the flow, then write and print the summary."""
    out = str(Path(out).resolve())
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "recipe.json").write_text(recipe.model_dump_json(indent=2))
    reports = (generate_flow if only_generate else pipeline_flow)(recipe, out)
    (Path(out) / "summary.json").write_text(json.dumps([r.model_dump() for r in reports], indent=2))
    print_summary(reports, out)
    return reports


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
        table.add_row(r.stage, str(r.count_in), str(r.count_out), f"{r.seconds:.1f}", notes,
                      str(Path(r.path).relative_to(out)) if r.path.startswith(out) else r.path)
    Console(width=max(Console().width, 110)).print(table)
