"""Scheduled refresh: a dataset that grows as new prompts arrive, one version per run.

    rlaif deploy RECIPE --cron "0 3 * * *"     register the deployment with the Prefect server
    rlaif serve                                run the deployments' flow runs as they come due

Each run of `refresh_flow` reads the prompt source again (with hygiene) and keeps only the prompts
it has not seen (by prompt id and prompt hash). Those become the run's new *batch*, saved in
`<run dir>/refresh/shard-<NNNN>.jsonl`; each batch is chunked on its own, so a grown source never
re-chunks what was done, and every earlier batch's shards are found done: no model loads for it.
Then every prompt still in the source is binarized and published as the next version,
`<run dir>/versions/<NNNN>/` (dataset, card, manifest) with `<run dir>/dataset` pointing at it;
earlier versions are never touched, and a run that changes nothing writes no version.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from rlaif.core.records import Prompt
from rlaif.core.store import Manifest, RunStore, clean_leftovers, default_run_dir, run_lock
from rlaif.flows.failures import check_failed_rows
from rlaif.runners.context import flow_run, run_context
from rlaif.flows.pipeline import run_stages
from rlaif.flows.report import StageReport, write_summary
from rlaif.flows.steps import generate_step
from rlaif.recipe.preflight import preflight
from rlaif.recipe.spec import Recipe, load_recipe
from rlaif.prompts.prompt_sets import PROMPTS, write_prompt_chunks
from rlaif.prompts.hygiene import clean_source
from rlaif.preferences.versions import latest_version

BATCHES = "refresh"


def prompt_batches(store: RunStore, prompts: list[Prompt]) -> tuple[list[list[Prompt]], list[Prompt]]:
    """Earlier batches as saved, plus (saved now) a batch of the prompts none of them holds."""
    keys = store.keys(BATCHES)
    batches = [store.read(BATCHES, k, Prompt) for k in keys]
    seen = {(p.prompt_id, p.hash) for b in batches for p in b}
    new = [p for p in prompts if (p.prompt_id, p.hash) not in seen]
    if new:
        store.write(BATCHES, f"{len(keys) + 1:04d}", new)  # before generating: a crash resumes this batch
        batches.append(new)
    return batches, new


def batched_prompts(recipe: Recipe, out: str) -> tuple[Manifest, object, StageReport, int]:
    store = RunStore(out)
    p = recipe.prompts
    kept, hygiene_report = clean_source(p.source, p.split, p.limit, recipe.hygiene, store, run_context().reporter)
    batches, new = prompt_batches(store, kept)
    current_ids = {(q.prompt_id, q.hash) for q in kept}  # a prompt edited or dropped since is left out
    shards = []
    for b in batches:
        shards += write_prompt_chunks([q for q in b if (q.prompt_id, q.hash) in current_ids], store,
                                      recipe.shard_size).shards
    manifest = Manifest(stage=PROMPTS, shards=shards)
    report = StageReport(stage="prompts", count_in=hygiene_report.prompts_in, count_out=hygiene_report.kept, seconds=0,
                         notes={"source": p.source, "new": len(new), "batches": len(batches)},
                         path=str(Path(out) / BATCHES))
    return manifest, hygiene_report, report, len(new)


@flow(name="rlaif-refresh", log_prints=False)
def refresh_flow(recipe_path: str, out: str | None = None, overrides: list[str] | None = None) -> dict:
    """Generate and judge the prompts not seen before, then write the next dataset version."""
    recipe = load_recipe(recipe_path, overrides)
    out = str(Path(out or default_run_dir(recipe.name)).resolve())
    with run_lock(out):  # as every command: one run at a time, and what a killed one left is removed
        clean_leftovers(out)
        preflight(recipe, out, {"generate", "judge", "binarize"})  # a deployment's run: before any compute
        with flow_run(recipe, out) as ctx:
            prompts, hygiene_report, report, new = batched_prompts(recipe, out)
            todo = sum(s.todo for j in generate_step(ctx, prompts).plan(ctx) for s in j.shards)
            before = latest_version(out)
            reports = run_stages(ctx, "binarize", prompts=(prompts, hygiene_report, report)).reports
        published = reports[-1]
        written = before is None or Path(published.path) != before
        reports[1].notes["shards generated"] = todo
        reports[-1] = published.model_copy(update={"notes": {**published.notes, "new version": written}})
        write_summary(reports, out, "refresh_summary.json")
    check_failed_rows([r.failures for r in reports if r.failures], recipe.flow.max_failed_rows)  # the flow run fails
    return {"version": published.path, "written": written, "new_prompts": new, "pairs": published.count_out,
            "shards_generated": todo}
