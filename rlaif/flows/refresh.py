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
from rlaif.recipe.spec import Recipe, RecipeError, load_recipe
from rlaif.prompts.prompt_sets import PROMPTS, write_prompt_chunks
from rlaif.prompts.hygiene import HygieneReport, clean_source
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


def current_batches(recipe: Recipe, out: str) -> tuple[list[list[Prompt]], list[Prompt], HygieneReport]:
    """The batches so far, each without the prompts edited or dropped from the source since (a new
    batch saved first); the new prompts; hygiene's report of the source."""
    store = RunStore(out)
    p = recipe.prompts
    kept, hygiene_report = clean_source(p.source, p.split, p.limit, recipe.hygiene, store, run_context().reporter)
    batches, new = prompt_batches(store, kept)
    current_ids = {(q.prompt_id, q.hash) for q in kept}
    return [[q for q in b if (q.prompt_id, q.hash) in current_ids] for b in batches], new, hygiene_report


def batched_prompts(recipe: Recipe, out: str) -> tuple[Manifest, object, StageReport, int]:
    store = RunStore(out)
    batches, new, hygiene_report = current_batches(recipe, out)
    shards = []
    for b in batches:
        shards += write_prompt_chunks(b, store, recipe.shard_size).shards
    manifest = Manifest(stage=PROMPTS, shards=shards)
    report = StageReport(stage="prompts", count_in=hygiene_report.prompts_in, count_out=hygiene_report.kept, seconds=0,
                         notes={"source": recipe.prompts.source, "new": len(new), "batches": len(batches)},
                         path=str(Path(out) / BATCHES))
    return manifest, hygiene_report, report, len(new)


@flow(name="rlaif-refresh", log_prints=False)
def refresh_flow(recipe_path: str, out: str | None = None, overrides: list[str] | None = None) -> dict:
    """Generate and judge the prompts not seen before, then write the next dataset version."""
    recipe = load_recipe(recipe_path, overrides)
    out = str(Path(out or default_run_dir(recipe.name)).resolve())
    if recipe.rounds.on:
        return refresh_rounds(recipe, out, recipe_path)
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


def refresh_rounds(recipe: Recipe, out: str, recipe_path: str) -> dict:
    """A scheduled series of rounds (`rounds.prompts: new`, flows/rounds.py): this refresh's new
    prompts are the next round's, which runs with every earlier round found done; once the series
    has its `count` rounds, new prompts are kept (as a batch) for a larger `count`."""
    from rlaif.flows.rounds import SCHEDULED_ONLY, batch_draw, round_dir, round_recipe, run_rounds

    if not recipe.rounds.scheduled:
        raise RecipeError(f"{recipe_path}: {SCHEDULED_ONLY}")
    with run_lock(out):
        clean_leftovers(out)
        preflight(round_recipe(recipe, out, 1), out, {"generate", "judge", "binarize", "sft", "dpo"})
        with flow_run(recipe, out) as ctx:
            batches, new, hygiene = current_batches(recipe, out)
            draw = batch_draw(recipe, batches, hygiene, hygiene.kept)
            last = 1 + len(draw.rounds)
            before = latest_version(round_dir(out, last))
            if len(batches) > recipe.rounds.count:
                ctx.reporter.note(f"the series has its {recipe.rounds.count} rounds; {len(batches) - recipe.rounds.count} "
                                  f"batch(es) of new prompts wait for a larger rounds.count")
            reports = run_rounds(ctx, draw)
        write_summary(reports, out, "refresh_summary.json")
    check_failed_rows([r.failures for r in reports if r.failures], recipe.flow.max_failed_rows)
    version = latest_version(round_dir(out, last))
    return {"version": str(version), "written": before is None or version != before, "new_prompts": len(new),
            "round": last, "rounds": recipe.rounds.count,
            "pairs": next((r.count_out for r in reversed(reports) if r.stage.endswith(": binarize")), 0),
            "completions_generated": sum(r.count_out for r in reports if r.stage.endswith(": generate") and not r.cached)}
