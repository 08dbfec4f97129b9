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

import json
from pathlib import Path

import yaml
from prefect import flow
from pydantic import ValidationError
from rich.table import Table

from flows.pipeline import StageReport, console, judge_step, run_stages, write_summary
from flows.recipe import Recipe, RecipeError
from judges.agreement import agreement
from judges.spec import JudgeSpec


def load_judge(path: str | Path) -> JudgeSpec:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: judge file not found")
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict) and "judge" in data:
        data = data["judge"]
    elif isinstance(data, dict) and "judges" in data:
        if len(data["judges"]) != 1:
            raise RecipeError(f"{path}: field 'judges': give exactly one judge to swap in")
        data = data["judges"][0]
    try:
        return JudgeSpec.model_validate(data)
    except ValidationError as e:
        raise RecipeError("\n".join(f"{path}: field '{'.'.join(map(str, err['loc']))}': {err['msg']}"
                                    for err in e.errors())) from None


def with_judge(recipe: Recipe, spec: JudgeSpec, source: str = "") -> Recipe:
    """The recipe with `spec` among its judges (a judge of the same name must be the same judge)."""
    for j in recipe.judges:
        if j.name == spec.name:
            if j != spec:
                raise RecipeError(f"{source}: judge name {spec.name!r} is already in the recipe with other "
                                  "settings; give the new judge its own name")
            return recipe
    return Recipe.model_validate({**recipe.model_dump(), "judges": [*recipe.model_dump()["judges"], spec.model_dump()]})


@flow(name="rlaif-judge-swap", log_prints=False)
def judge_swap_flow(recipe: Recipe, out: str, judge_name: str, previous: str) -> tuple[list[StageReport], dict]:
    """Judge the stored completions with `judge_name`, binarize, and compare with `previous`."""
    records: dict = {}
    reports = run_stages(recipe, out, "binarize", judge_name, keep=records)
    old, r = judge_step(records["prompts"], records["completions"], recipe.judge_spec(previous), recipe, out)
    reports.append(r.model_copy(update={"stage": "judge (previous)"}))
    full = agreement(old, records["judgements"], (previous, judge_name), recipe.binarize.score).model_dump()
    report = {"judge": judge_name, "previous": previous, **full, "completions": full["completions_scored_by_both"],
              "prompts": full["prompts_compared"]}
    where = Path(out) / "judge-swap" / judge_name
    where.mkdir(parents=True, exist_ok=True)
    (where / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    return reports, report


def swap(recipe: Recipe, judge_file: str | Path, out: str | Path) -> tuple[list[StageReport], dict]:
    spec = load_judge(judge_file)
    previous = recipe.judge_spec().name
    if spec.name == previous:
        raise RecipeError(f"{judge_file}: judge {spec.name!r} is the recipe's own judge; nothing to swap")
    recipe = with_judge(recipe, spec, str(judge_file))
    out = str(Path(out).resolve())
    Path(out).mkdir(parents=True, exist_ok=True)
    reports, report = judge_swap_flow(recipe, out, spec.name, previous)
    write_summary(reports, out, f"judge-swap/{spec.name}/summary.json")
    table = Table(title=f"agreement: {spec.name} vs {previous}")
    cols = ("completions", "spearman", "kendall", "prompts", "chosen_agreement", "cohen_kappa")
    for col in cols:
        table.add_column(col.replace("_", " "))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    table.add_row(*(fmt(report[k]) for k in cols))
    console.print(table)
    print(f"agreement with {previous}: spearman={fmt(report['spearman'])} "
          f"chosen_agreement={fmt(report['chosen_agreement'])} over {report['prompts']} prompts")
    return reports, report
