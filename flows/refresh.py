"""Scheduled refresh: a dataset that grows as new prompts arrive, one version per run.

    rlaif deploy RECIPE --cron "0 3 * * *"     register the deployment with the Prefect server
    rlaif serve                                run the deployments' flow runs as they come due

Each run of `refresh_flow` reads the prompt source again and keeps only the prompts it has not
seen (by prompt id and prompt hash). Those become the run's new *batch*, saved in
`<run dir>/refresh/shard-<NNNN>.jsonl`; every earlier batch is generated and judged exactly as
before, so its tasks are cache hits (or its shards are read back) and no model loads for it.
Batches keep the stage shards stable: a grown prompt list does not re-shard what was done. Then
everything still in the source is binarized and published as the next version,
`<run dir>/versions/<NNNN>/` (dataset, card, manifest) with `<run dir>/dataset` pointing at it;
earlier versions are never touched, and a run that changes nothing writes no version.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.pipeline import (StageReport, binarize_step, console, generate_step, judge_step, prompts_task,
                            write_summary)
from flows.recipe import Recipe, load_recipe
from generation.records import Completion, Judgement, Prompt
from generation.store import RunStore
from judges.dataset import latest_version

BATCHES = "refresh"


def prompt_batches(out: str, prompts: list[Prompt]) -> tuple[list[list[Prompt]], list[Prompt]]:
    """Earlier batches as saved, plus (saved now) a batch of the prompts none of them holds."""
    store = RunStore(out)
    keys = sorted(p.name[len("shard-"):-len(".jsonl")] for p in (Path(out) / BATCHES).glob("shard-*.jsonl"))
    batches = [store.read(BATCHES, k, Prompt) for k in keys]
    seen = {(p.prompt_id, p.hash) for b in batches for p in b}
    new = [p for p in prompts if (p.prompt_id, p.hash) not in seen]
    if new:
        store.write(BATCHES, f"{len(keys) + 1:04d}", new)  # before generating: a crash resumes this batch
        batches.append(new)
    return batches, new


# ----------------------------------------------------------------------------- the flow
def _total(stage: str, reports: list[StageReport], **notes) -> StageReport:
    return StageReport(stage=stage, count_in=sum(r.count_in for r in reports),
                       count_out=sum(r.count_out for r in reports), seconds=sum(r.seconds for r in reports),
                       cached=all(r.cached for r in reports), path=reports[0].path if reports else "",
                       notes={"batches": len(reports), "cached batches": sum(r.cached for r in reports), **notes})


@flow(name="rlaif-refresh", log_prints=False)
def refresh_flow(recipe_path: str, out: str | None = None, overrides: list[str] | None = None) -> dict:
    """Generate and judge the prompts not seen before, then write the next dataset version."""
    recipe: Recipe = load_recipe(recipe_path, overrides)
    out = str(Path(out or Path("runs") / recipe.name).resolve())
    Path(out).mkdir(parents=True, exist_ok=True)
    prompts = prompts_task(recipe.prompts)
    batches, new = prompt_batches(out, prompts)
    console.print(f"refresh: {len(prompts)} prompts in the source, {len(new)} new, {len(batches)} batches")

    spec = recipe.judge_spec()
    completions: list[Completion] = []
    judgements: list[Judgement] = []
    gen_reports, judge_reports = [], []
    for batch in batches:
        c, r = generate_step(batch, recipe, out)
        j, rj = judge_step(batch, c, spec, recipe, out)
        completions += c
        judgements += j
        gen_reports.append(r)
        judge_reports.append(rj)

    current = {(p.prompt_id, p.hash) for p in prompts}  # a prompt edited or dropped since is left out
    completions = [c for c in completions if (c.prompt_id, c.prompt_hash) in current]
    kept = {c.completion_id for c in completions}
    judgements = [j for j in judgements if j.completion_id in kept]
    bspec = recipe.binarize.model_copy(update={"judge": spec.name})
    before = latest_version(out)
    published = binarize_step(prompts, completions, judgements, bspec, recipe, out)
    written = before is None or Path(published.path) != before
    reports = [
        StageReport(stage="prompts", count_in=len(prompts), count_out=len(new), seconds=0,
                    notes={"source": recipe.prompts.source, "new": len(new)}),
        _total("generate", gen_reports, generated=sum(r.count_in for r in gen_reports if not r.cached)),
        _total("judge", judge_reports, judged=sum(r.count_in for r in judge_reports if not r.cached)),
        published.model_copy(update={"notes": {**published.notes, "new version": written}}),
    ]
    write_summary(reports, out, "refresh_summary.json")
    return {"version": published.path, "written": written, "new_prompts": len(new), "pairs": published.count_out,
            "generated": reports[1].notes["generated"], "judged": reports[2].notes["judged"]}
