"""Judge swap: the run's completions judged by another judge, binarized, and compared.

    rlaif run RECIPE --judge other.yaml

`other.yaml` holds one judge: a `judge:` block, a `judges:` list of one, or the judge's fields at
the top level. Nothing is generated again (the generate task is served from the cache, or its
shards are read back), the other judge rates the same completions, its verdicts are binarized
and published as the next dataset version (its manifest names the judge; earlier versions stay as
they are), and the agreement with the recipe's judge is printed and saved in
`<run dir>/judge-swap/<judge name>/agreement.json` beside the swap's summary.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from pydantic import ValidationError

from rlaif.core.errors import validation_message
from rlaif.core.records import Judgement, PairJudgement
from rlaif.core.store import RunStore, write_json
from rlaif.flows.launch import run_flow
from rlaif.runners.context import flow_run
from rlaif.flows.pipeline import judge, run_stages
from rlaif.flows.report import StageReport, write_summary
from rlaif.recipe.spec import Recipe, RecipeError, read_yaml
from rlaif.judges.agreement import agreement
from rlaif.judges.spec import JudgeSpec


def load_judge(path: str | Path) -> JudgeSpec:
    path = Path(path)
    data = read_yaml(path, "judge file")
    if isinstance(data, dict) and "judge" in data:
        data = data["judge"]
    elif isinstance(data, dict) and "judges" in data:
        if not isinstance(data["judges"], list) or len(data["judges"]) != 1:
            raise RecipeError(f"{path}: field 'judges': give exactly one judge to swap in")
        data = data["judges"][0]
    try:
        return JudgeSpec.model_validate(data)
    except ValidationError as e:
        raise RecipeError(validation_message(str(path), e)) from None


def with_judge(recipe: Recipe, spec: JudgeSpec, source: str = "") -> Recipe:
    """The recipe with `spec` among its judges (a judge of the same name must be the same judge)."""
    spec = spec.model_copy()
    spec._engine_default = recipe.engine  # its settings hash sees the engine it runs on, as the recipe's judges do
    spec._templates_dir = spec._templates_dir or recipe.templates_dir
    for j in recipe.judges:
        if j.name == spec.name:
            if j != spec:
                raise RecipeError(f"{source}: judge name {spec.name!r} is already in the recipe with other "
                                  "settings; give the new judge its own name")
            return recipe
    return recipe.model_copy(update={"judges": [*recipe.judges, spec]})


@flow(name="rlaif-judge-swap", log_prints=False)
def judge_swap_flow(recipe: Recipe, out: str, judge_name: str, previous: str) -> tuple[list[StageReport], dict]:
    """Judge the stored completions with `judge_name`, binarize, and compare with `previous`."""
    with flow_run(recipe, out) as ctx:
        made = run_stages(ctx, "binarize", judge_name, read_only=("generate",))
        ctx.reporter.stage(f"judge ({previous}, for comparison)")
        old_spec = recipe.judge_spec(previous)
        old, r = judge(ctx, made.completions, old_spec)
    reports = made.reports + [r.model_copy(update={"stage": "judge (previous)"})]
    store = RunStore(out)
    kind = lambda spec: PairJudgement if spec.pairwise else Judgement  # noqa: E731
    records_old = list(store.read_manifest(old, kind(old_spec)))
    records_new = list(store.read_manifest(made.judgements, kind(recipe.judge_spec(judge_name))))
    full = agreement(records_old, records_new, (previous, judge_name), recipe.binarize.score).model_dump()
    report = {"judge": judge_name, "previous": previous, **full, "completions": full["completions_scored_by_both"],
              "prompts": full["prompts_compared"], "sentinels": on_sentinels(out, records_old, recipe, judge_name)}
    write_json(Path(out) / "judge-swap" / judge_name / "agreement.json", report)
    return reports, report


def on_sentinels(out: str, records_old: list, recipe: Recipe, judge_name: str) -> dict | None:
    """The new judge's sentinel check against the recipe's judge on the same completions (its verdicts
    from the run): flips, score shift, Spearman and kappa; None when the new judge has no sentinels."""
    from rlaif.judges import sentinels
    from rlaif.judges.stage import record_type

    spec = recipe.judge_spec(judge_name)
    mine = [c for c in sentinels.history(out, judge_name) if c.settings_hash == spec.settings_hash()]
    if not spec.sentinels or not mine:
        return None
    now = sentinels.check_records(RunStore(out), mine[-1], record_type(spec))
    kept = {c.completion_id for c in sentinels.read_set(out).take(spec.sentinels).completions}
    ids = lambda r: [r.completion_a, r.completion_b] if isinstance(r, PairJudgement) else [r.completion_id]  # noqa: E731
    old = [r for r in records_old if set(ids(r)) <= kept]
    return sentinels.drift(old, now, 0, recipe.binarize.score).model_dump() | {"check": mine[-1].number}


def swap(recipe: Recipe, judge_file: str | Path, out: str | Path) -> tuple[list[StageReport], dict]:
    spec = load_judge(judge_file)
    previous = recipe.judge_spec().name
    if spec.name == previous:
        raise RecipeError(f"{judge_file}: judge {spec.name!r} is the recipe's own judge; nothing to swap")
    recipe = with_judge(recipe, spec, str(judge_file))
    out = str(Path(out).resolve())
    reports, report = run_flow(judge_swap_flow, recipe, out, spec.name, previous)
    write_summary(reports, out, f"judge-swap/{spec.name}/summary.json")
    return reports, report
