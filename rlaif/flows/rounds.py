"""On-policy rounds: iterative dDPO, each round's model answering the next round's prompts.

A recipe with `rounds: K` (recipe/rounds.py) runs K rounds. Round 1 is the plain run, in the run
directory itself. Round k > 1 is the same chain of stages in `<run>/rounds/<k>/`, with the recipe
written for it (`round_recipe`, saved as its recipe.json): the generators are the policy, round
k-1's dDPO model, as `samples` members that differ only by seed (and the ensemble beside it when
`ensemble: true`); a judge with `model: policy` judges with that model; binarization makes
on-policy pairs (`best_vs_worst_samples`, `policy_vs_ensemble`); dSFT is dropped and dDPO trains
from round k-1's model against the reference the recipe names (the dSFT model, or round k-1's).
Each round is a dataset version and a model under its folder, every stage resumed and cached as
in a plain run (the policy's members carry its training hash, so a retrained policy's answers are
made again); an unchanged rerun of a finished series computes nothing.

    <run>/                       round 1
    <run>/rounds/<k>/            round k: recipe.json, prompts/, completions/, judgements/, versions/, dataset, dpo/
    <run>/rounds/held-out/       the held-out prompts, every model's greedy answers, the judge's verdicts
    <run>/rounds/eval/round-<k>.json   round k's measurements (evaluation/rounds_report.py)
    <run>/rounds/mt_bench/       with `mt_bench:`, every model's MT-Bench answers and gradings (evaluation/mt_bench.py)
    <run>/rounds/summary.json, rounds.md, rounds.png

Prompts: round 1 takes the recipe's (`prompts.limit` of the source); `held_out` prompts are drawn
(seeded) from the rest of the source and never given to a round; `prompts: fresh` gives round k
the next `per_round` prompts of a seeded order of what is left (`same`: round 1's prompts again).
The draw is checked before any compute. `prompts: new` is a series that scheduled refreshes
advance (flows/refresh.py): round k is the k-th batch of prompts new to the source, the first
batch giving up its `held_out` prompts (`batch_draw`), so each refresh with new prompts runs the
next round, every earlier one found done.

Order, so that each model loads once per round: after round k-1 trains, its model answers the
held-out prompts and then, still loaded, round k's prompts; the judge then judges round k's
answers and, still loaded, the held-out ones, and round k-1 is measured; then round k binarizes
and trains. After the last round its model answers and is measured alone. With `mt_bench:` each
model answers MT-Bench's questions right after the held-out prompts (the dSFT model's first), on
the same load, and the measurement grades them while the judge is loaded (round k's row carries
round k's score, the dSFT model's with it).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow

from rlaif.core.errors import ConfigError
from rlaif.core.records import Completion, Judgement, Prompt, content_hash
from rlaif.core.store import Manifest, RunStore, write_atomic
from rlaif.flows.pipeline import run_stages, run_step
from rlaif.flows.report import StageReport
from rlaif.flows.steps import JudgeStep, Step, generate_step, key
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.prompts.hygiene import HygieneReport
from rlaif.recipe.rounds import POLICY, measuring_judge, mt_bench_judge, student
from rlaif.recipe.spec import Recipe
from rlaif.runners.context import RunContext, flow_run, free_engines, using

ROUNDS = "rounds"
HELD_OUT = "held-out"
DSFT = "dsft"
MT_BENCH = "mt_bench"
SCHEDULED_ONLY = ("a scheduled refresh of a series of rounds runs one round per batch of new prompts: set "
                  "rounds.prompts: new (fresh and same draw every round's prompts at once, for `rlaif run`)")
NOT_A_REFRESH = ("rounds.prompts: new takes each round's prompts from a scheduled refresh (the prompts new to "
                 "the source since the last one): run it with `rlaif refresh` or `rlaif deploy`, or use prompts: fresh")


def round_dir(out: str | Path, k: int) -> Path:
    return Path(out) if k == 1 else Path(out) / ROUNDS / str(k)


def model_dir(out: str | Path, k: int) -> Path:
    """Round k's dDPO model."""
    return round_dir(out, k) / "dpo"


def revision(model: str | Path) -> str | None:
    """What a model folder of this run was trained from (its stage state), or None."""
    from rlaif.training.common import stage_state

    return (stage_state(model) or {}).get("inputs")


def dsft_model(recipe: Recipe, out: str | Path) -> str:
    """The dSFT model: what round 1's dDPO starts from (train.dpo.model, else this run's sft/)."""
    from rlaif.engines.models import resolve_model

    model = recipe.train.dpo.model
    return resolve_model(model) if model else str(Path(out) / "sft")


def dsft_name(recipe: Recipe, out: str | Path) -> str:
    """The dSFT model as the recipe names it, for the engines that answer with it: a hub id is
    resolved where it is loaded (a Ray worker, in its own cache), this run's sft/ is a folder."""
    return recipe.train.dpo.model or dsft_model(recipe, out)


# ----------------------------------------------------------------------------- a round's recipe
def round_recipe(recipe: Recipe, out: str | Path, k: int) -> Recipe:
    """The recipe of round k (see the module doc); round 1's is the recipe with `policy` judges resolved."""
    r = recipe.rounds
    data = recipe.model_dump(mode="json")
    if k == 1:
        policy, rev = student(recipe), None
    else:
        policy = str(model_dir(out, k - 1))
        rev = revision(policy)
        sampling = (r.sampling or (recipe.generators[0].sampling if recipe.generators else None))
        base = sampling.model_dump(mode="json") if sampling is not None else {}
        members = [{"name": name, "model": policy, "revision": rev, "format": "chat", **policy_engine(recipe),
                    "sampling": {**base, "seed": base.get("seed", 0) + i}} for i, name in enumerate(r.member_names())]
        dpo = {**data["train"]["dpo"], "model": policy}
        if r.reference == "sft":
            dpo["ref_model"] = dsft_model(recipe, out)
        data.update(name=f"{recipe.name}-round{k}", generators=members + (data["generators"] if r.ensemble else []),
                    models_per_prompt=None, train={"dpo": dpo},
                    binarize={**data["binarize"], "strategy": r.strategy, "policy": r.member_names()})
    data["judges"] = [{**j, "model": policy} if j["model"] == POLICY else j for j in data["judges"]]
    return Recipe.model_validate(data, context={"templates_dir": recipe.templates_dir})


def policy_engine(recipe: Recipe) -> dict[str, Any]:
    """The policy's `engine:` block (rounds.engine, only the fields it sets), for its members' specs."""
    engine = recipe.rounds.engine
    return {"engine": engine.model_dump(mode="json", exclude_unset=True)} if engine is not None else {}


def held_out_recipe(recipe: Recipe, name: str, model: str) -> Recipe:
    """One model answering the held-out prompts greedily, and the rounds' judge."""
    data = recipe.model_dump(mode="json")
    sampling = recipe.rounds.sampling or (recipe.generators[0].sampling if recipe.generators else None)
    tokens = sampling.max_tokens if sampling is not None else 256
    member = {"name": name, "model": model, "revision": revision(model), "format": "chat", **policy_engine(recipe),
              "sampling": {"temperature": 0.0, "max_tokens": tokens, "seed": recipe.seed}}
    judge = measuring_judge(recipe).model_dump(mode="json")
    data.update(name=f"{recipe.name}-{HELD_OUT}", generators=[member], judges=[judge], models_per_prompt=None,
                train={}, binarize={}, rounds=1)
    return Recipe.model_validate(data, context={"templates_dir": recipe.templates_dir})


# ----------------------------------------------------------------------------- prompts
@dataclass
class Draw:
    """Which prompts go where: round 1's ids, the held-out prompts, and each later round's."""

    first: list[Prompt]
    held_out: list[Prompt]
    rounds: dict[int, list[Prompt]]
    hygiene: HygieneReport
    source: int = 0  # prompts in the source after hygiene
    batched: bool = False  # round 1's prompts are `first` (a refresh's batch), not the recipe's own read

    def prompts(self, k: int) -> list[Prompt]:
        return self.rounds[k]


def draw_prompts(recipe: Recipe, out: str, reporter: Any) -> Draw:
    """The rounds' prompts (module doc); an error before any compute when the source is too small."""
    from rlaif.prompts.hygiene import clean_source

    p, r = recipe.prompts, recipe.rounds
    if r.scheduled:
        raise ConfigError(NOT_A_REFRESH)
    store = RunStore(out)
    everything, hygiene = clean_source(p.source, p.split, None, recipe.hygiene, store, reporter)
    first = everything[:p.limit] if p.limit else everything
    if p.limit:  # the plain run's own read (hygiene of the first `limit`): the prompts round 1 has
        first, _ = clean_source(p.source, p.split, p.limit, recipe.hygiene, store, reporter)
    taken = {q.prompt_id for q in first}
    rest = sorted((q for q in everything if q.prompt_id not in taken),
                  key=lambda q: content_hash(recipe.seed, ROUNDS, q.prompt_id))
    per = r.per_round or len(first)
    need = r.held_out + (per * (r.count - 1) if r.prompts == "fresh" else 0)
    if len(rest) < need:
        raise ConfigError(
            f"rounds: {p.source!r} has {len(everything)} prompts after hygiene; round 1 takes {len(first)}, "
            f"held_out {r.held_out}" + (f" and rounds 2-{r.count} take {per} fresh ones each" if r.prompts == "fresh"
                                        else "") + f": {need} beyond round 1's, {len(rest)} left. Use a larger "
            f"source, a smaller prompts.limit, rounds.per_round or rounds.held_out, or rounds.prompts: same")
    held, rest = rest[:r.held_out], rest[r.held_out:]
    rounds = {k: (rest[(k - 2) * per:(k - 1) * per] if r.prompts == "fresh" else list(first))
              for k in range(2, r.count + 1)}
    return Draw(first, held, rounds, hygiene, len(everything))


def batch_draw(recipe: Recipe, batches: list[list[Prompt]], hygiene: HygieneReport, source: int) -> Draw:
    """The rounds of a scheduled series (`prompts: new`): round k is refresh batch k, as many rounds as
    there are batches, up to `count`; the held-out prompts are a seeded draw from the first batch, kept
    out of every later one (a held-out prompt edited since comes back in a batch of its own)."""
    r, first = recipe.rounds, batches[0]
    order = sorted(first, key=lambda q: content_hash(recipe.seed, ROUNDS, q.prompt_id))
    held = order[:r.held_out]
    if len(first) <= r.held_out:
        raise ConfigError(f"rounds: the first refresh found {len(first)} prompts in {recipe.prompts.source!r} "
                          f"and held_out takes {r.held_out}, leaving none for round 1: add prompts to the source "
                          f"or lower rounds.held_out")
    kept = {q.prompt_id for q in held}
    rounds = {k: [q for q in batches[k - 1] if q.prompt_id not in kept] for k in range(2, min(len(batches), r.count) + 1)}
    return Draw([q for q in first if q.prompt_id not in kept], held, rounds, hygiene, source, batched=True)


def written_prompts(prompts: list[Prompt], ctx: RunContext, what: dict[str, Any], draw: Draw
                    ) -> tuple[Manifest, HygieneReport, StageReport]:
    """Prompts as chunks in the context's run dir, as the prompts stage hands them on."""
    from rlaif.prompts.prompt_sets import write_prompt_chunks

    manifest = write_prompt_chunks(prompts, ctx.store, ctx.recipe.shard_size)
    report = StageReport(stage="prompts", count_in=draw.source, count_out=len(prompts), seconds=0,
                         notes={"source": ctx.recipe.prompts.source, **what}, path=str(Path(ctx.out) / "prompts"))
    # drawn from the source's prompts that hygiene kept: this round's are its prompts in, and all kept
    return manifest, HygieneReport(prompts_in=len(prompts), kept=len(prompts)), report


# ----------------------------------------------------------------------------- measuring
@dataclass
class HeldOut:
    """The held-out answers and verdicts so far: per model (dsft, round-1, ...) its manifests."""

    completions: dict[str, Manifest] = field(default_factory=dict)
    judgements: dict[str, Manifest] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)


def model_name(k: int) -> str:
    return f"round-{k}"


def held_out_answers(ctx: RunContext, draw: Draw, held: HeldOut, name: str, model: str) -> list[StageReport]:
    """`model` answers the held-out prompts (greedy), into <run>/rounds/held-out/."""
    if not draw.held_out:
        return []
    recipe = held_out_recipe(ctx.recipe, name, model)
    ctx.reporter.stage(f"held-out: {name} answers")
    with using(out=str(Path(ctx.out) / ROUNDS / HELD_OUT), recipe=recipe) as c:
        prompts, _, _ = written_prompts(draw.held_out, c, {}, draw)
        held.completions[name], r = run_step(generate_step(c, prompts), c)
    held.models[name] = model
    return [r.model_copy(update={"stage": f"held-out: {name} answers"})]


def held_out_verdicts(ctx: RunContext, held: HeldOut, name: str) -> list[StageReport]:
    """The rounds' judge on one model's held-out answers (a pointwise judge; a pairwise one compares
    pairs when measuring)."""
    spec = measuring_judge(ctx.recipe)
    if name not in held.completions or spec.pairwise:
        return []
    recipe = held_out_recipe(ctx.recipe, name, held.models[name])
    ctx.reporter.stage(f"held-out: judge {name}")
    with using(out=str(Path(ctx.out) / ROUNDS / HELD_OUT), recipe=recipe) as c:
        held.judgements[name], r = run_step(JudgeStep(completions=held.completions[name], spec=recipe.judges[0]), c)
    return [r.model_copy(update={"stage": f"held-out: judge {name}"})]


# ----------------------------------------------------------------------------- MT-Bench (rounds.mt_bench)
@dataclass(eq=False)
class MTBenchAnswers(Step):
    """One model's answers to the rounds' MT-Bench questions, into <run>/rounds/mt_bench/ (its shards
    are the cache: done when every answer is there for the model's files as they are now)."""

    label: str = DSFT
    model: str = ""
    name = "mt-bench answers"

    def under_test(self) -> Any:
        from rlaif.evaluation.mt_bench import ModelUnderTest

        return ModelUnderTest(self.label, self.model)

    def answers(self, ctx: RunContext, ask: bool) -> dict[str, int] | None:
        """How many questions and usable answers (None: some are missing and `ask` is False)."""
        from rlaif.evaluation.mt_bench import answer_questions, select_questions

        m = ctx.recipe.rounds.mt_bench
        store = RunStore(Path(ctx.out) / ROUNDS / MT_BENCH)
        found = answer_questions(store, self.under_test(), select_questions(m.questions), ctx, m.max_tokens, ask)
        if found is None:
            return None
        return {"questions": len(found), "answers": sum(c.ok for turns in found.values() for c in turns)}

    def done_key(self, ctx: RunContext) -> str | None:
        if self.answers(ctx, ask=False) is None:
            return None
        from rlaif.evaluation.mt_bench import model_key

        m = ctx.recipe.rounds.mt_bench
        return key("mt-bench-answers", self.label, model_key(self.model), m.questions, m.max_tokens, ctx.seed)

    def run(self, ctx: RunContext) -> dict[str, int]:
        return self.answers(ctx, ask=True)

    def output(self, ctx: RunContext) -> dict[str, int]:
        return self.answers(ctx, ask=False) or {}

    def report(self, ctx: RunContext, out: dict, seconds: float, cached: bool) -> StageReport:
        return StageReport(stage=f"MT-Bench: {self.label} answers", count_in=2 * out.get("questions", 0),
                           count_out=out.get("answers", 0),
                           seconds=seconds, cached=cached, path=str(Path(ctx.out) / ROUNDS / MT_BENCH))


def mt_bench_answers(ctx: RunContext, name: str, model: str) -> list[StageReport]:
    """`model` answers the rounds' MT-Bench questions (with `rounds.mt_bench`), on the load of its held-out answers."""
    if ctx.recipe.rounds.mt_bench is None:
        return []
    ctx.reporter.stage(f"MT-Bench: {name} answers")
    return [run_step(MTBenchAnswers(label=name, model=model), ctx)[1]]


def mt_bench_scores(ctx: RunContext, k: int) -> dict[str, Any]:
    """The dSFT model's and rounds 1..k's MT-Bench, graded by the judge that `rounds.mt_bench` names
    (answers already made, gradings done before kept): per label its scores."""
    from rlaif.evaluation.mt_bench import ModelUnderTest, run_mt_bench

    m = ctx.recipe.rounds.mt_bench
    models = [ModelUnderTest(DSFT, dsft_name(ctx.recipe, ctx.out))] + [
        ModelUnderTest(model_name(j), str(model_dir(ctx.out, j))) for j in range(1, k + 1)]
    result = run_mt_bench(Path(ctx.out) / ROUNDS / MT_BENCH, models, mt_bench_judge(ctx.recipe), ctx, m.questions,
                          m.max_tokens)
    keep = ("score", "turn_1", "turn_2", "expected", "graded", "turns")
    return {label: {"judge": result["judge"], "questions": len(result["questions"]), **{c: s[c] for c in keep}}
            for label, s in result["models"].items()}


@dataclass(eq=False)
class MeasureStep(Step):
    """Round k measured (evaluation/rounds_report.py): win rates on the held-out prompts, the judge's
    score and the answers' length, and the implicit reward's accuracy on round k's test_prefs."""

    k: int = 1
    held: HeldOut = None  # type: ignore[assignment]
    name = "measure"

    def path(self, ctx: RunContext) -> Path:
        return Path(ctx.out) / ROUNDS / "eval" / f"round-{self.k}.json"

    def identity(self, ctx: RunContext) -> str:
        from rlaif.preferences.versions import latest_version, version_manifest

        version = latest_version(round_dir(ctx.out, self.k))
        data = version_manifest(version).get("inputs_hash") if version is not None else None
        h, mt = self.held, ctx.recipe.rounds.mt_bench
        # MT-Bench's part only when it is asked: a series measured without it keeps its keys
        mt_part = [] if mt is None else [[mt.questions, mt.max_tokens, mt_bench_judge(ctx.recipe).settings_hash(),
                                          revision(dsft_model(ctx.recipe, ctx.out))]]
        return key("measure", self.k, measuring_judge(ctx.recipe).settings_hash(), data,
                   revision(model_dir(ctx.out, self.k)),
                   {n: [m.hash for m in (h.completions.get(n), h.judgements.get(n)) if m is not None]
                    for n in sorted(h.completions)}, *mt_part)

    def done_key(self, ctx: RunContext) -> str | None:
        try:
            found = json.loads(self.path(ctx).read_text()).get("key")
        except (OSError, ValueError):
            return None
        want = self.identity(ctx)
        return want if found == want else None

    def output(self, ctx: RunContext) -> dict:
        return json.loads(self.path(ctx).read_text())

    def run(self, ctx: RunContext) -> dict:
        if self.done_key(ctx) is not None:  # measured already (Prefect's cache is an accelerator, not the truth)
            return self.output(ctx)
        out = {"key": self.identity(ctx), **measure(ctx, self.k, self.held)}
        write_atomic(self.path(ctx), json.dumps(out, indent=2))
        return out

    def report(self, ctx: RunContext, m: dict, seconds: float, cached: bool) -> StageReport:
        from rlaif.evaluation.rounds_report import table_row

        row = table_row(m)
        notes = {c: round(v, 3) if isinstance(v, float) else v for c, v in row.items()
                 if c not in ("round", "policy") and v is not None}
        return StageReport(stage=f"round {self.k}: measure", count_in=m.get("prompts", 0),
                           count_out=sum(w.get("judged", 0) for w in m.get("wins", {}).values()), seconds=seconds,
                           cached=cached, notes=notes, path=str(self.path(ctx)))


def measure(ctx: RunContext, k: int, held: HeldOut) -> dict[str, Any]:
    """Round k's row (evaluation/rounds_report.py has the definitions)."""
    from rlaif.evaluation.rounds_report import mean, reward_accuracy, win_rate
    from rlaif.evaluation.win_rate import trained_beta
    from rlaif.judges.stage import compare_pairs, pointwise_verdicts
    from rlaif.training.common import load_splits, stage_state

    spec = measuring_judge(ctx.recipe)
    store = RunStore(Path(ctx.out) / ROUNDS / HELD_OUT)
    answers = {n: [c for c in store.read_manifest(m, Completion) if c.ok] for n, m in held.completions.items()}
    verdicts = {n: list(store.read_manifest(m, Judgement)) for n, m in held.judgements.items()}
    by = {(c.model, c.prompt_id): c for cs in answers.values() for c in cs}
    me = model_name(k)
    others = {"previous": model_name(k - 1) if k > 1 else DSFT, "round 1": model_name(1) if k > 1 else None,
              "dsft": DSFT}
    prompts: list[Prompt] = []  # a pairwise judge's comparisons read them
    wins: dict[str, Any] = {}
    for what, other in others.items():
        if other is None or me not in answers or other not in answers:
            continue
        pairs = [(by[me, c.prompt_id], by[other, c.prompt_id]) for c in answers[me] if (other, c.prompt_id) in by]
        if spec.pairwise:
            prompts = prompts or held_prompts(store)
            found = compare_pairs(prompts, pairs, spec, store, ctx)
        else:
            found = pointwise_verdicts(spec, pairs, verdicts.get(me, []) + verdicts.get(other, []))
        wins[what] = {**win_rate(found), "against": other}

    def score(name: str) -> float | None:
        return None if spec.pairwise else mean([spec.impl.score(j) for j in verdicts.get(name, [])
                                                if j.status == "parsed"])

    mt = mt_bench_scores(ctx, k) if ctx.recipe.rounds.mt_bench is not None else None  # the judge still loaded
    free_engines(ctx)  # the HF models next, for the reward
    folder = model_dir(ctx.out, k)
    state = stage_state(folder) or {}
    rows = []
    dataset = round_dir(ctx.out, k) / "dataset"
    if dataset.exists():
        test = load_splits(dataset)["test_prefs"]
        rows = test.select_columns(["prompt", "chosen", "rejected"]).to_list()
    reference = state.get("ref_model") or state.get("start_model")
    reward = reward_accuracy(str(folder), reference, rows, trained_beta(folder)) if reference else {}
    tokens = lambda n: mean([c.output_tokens for c in answers.get(n, [])])  # noqa: E731
    row = {"round": k, "model": str(folder), "revision": state.get("inputs"), "reference": reference,
           "prompts": len(answers.get(me, [])), "wins": wins, "judge": spec.name,
           "judge_score": score(me), "answer_tokens": tokens(me), "reward": reward,
           "pairs": int(state.get("metrics", {}).get("rows", 0)), "steps": state.get("metrics", {}).get("steps"),
           "dsft": {"model": held.models.get(DSFT), "judge_score": score(DSFT), "answer_tokens": tokens(DSFT),
                    "prompts": len(answers.get(DSFT, []))}}
    if mt is not None:
        row["mt_bench"] = mt[me]
        row["dsft"]["mt_bench"] = mt[DSFT]
    return row


def held_prompts(store: RunStore) -> list[Prompt]:
    from rlaif.prompts.prompt_sets import PROMPTS

    return [p for k in store.keys(PROMPTS) for p in store.read(PROMPTS, k, Prompt)]


@dataclass(eq=False)
class TableStep(Step):
    """The rounds' table and plot, from their measurements: read every time (cheap)."""

    count: int = 1
    name = "rounds"
    always_runs = True

    def run(self, ctx: RunContext) -> dict:
        from rlaif.evaluation.rounds_report import write_report

        root = Path(ctx.out) / ROUNDS
        measured = [json.loads((root / "eval" / f"round-{k}.json").read_text()) for k in range(1, self.count + 1)
                    if (root / "eval" / f"round-{k}.json").exists()]
        return write_report(root, measured, measured[-1].get("dsft") if measured else None)

    def report(self, ctx: RunContext, summary: dict, seconds: float, cached: bool) -> StageReport:
        return StageReport(stage="rounds", count_in=self.count, count_out=len(summary["rows"]), seconds=seconds,
                           notes={"table": str(Path(ctx.out) / ROUNDS / "rounds.md")},
                           path=str(Path(ctx.out) / ROUNDS / "summary.json"))


# ----------------------------------------------------------------------------- the rounds in order
def tagged(k: int, reports: list[StageReport]) -> list[StageReport]:
    return [r.model_copy(update={"stage": f"round {k}: {r.stage}"}) for r in reports]


def run_rounds(ctx: RunContext, draw: Draw | None = None) -> list[StageReport]:
    """Every round in order (module doc), each stage through `run_step`; the reports of all. `draw`:
    the prompts of the rounds to run (a scheduled series': `batch_draw`), else the recipe's."""
    recipe, out = ctx.recipe, ctx.out
    draw = draw or draw_prompts(recipe, out, ctx.reporter)
    held = HeldOut()
    with using(recipe=round_recipe(recipe, out, 1)) as c:
        first = written_prompts(draw.first, c, {"round": 1, "draw": recipe.rounds.prompts}, draw) if draw.batched else None
        reports = tagged(1, run_stages(c, "train", prompts=first).reports)
    reports += answered(ctx, draw, held, DSFT, dsft_name(recipe, out))
    last = 1 + len(draw.rounds)
    for k in range(2, last + 1):
        reports += answered(ctx, draw, held, model_name(k - 1), str(model_dir(out, k - 1)))
        sub = round_recipe(recipe, out, k)
        folder = round_dir(out, k)
        folder.mkdir(parents=True, exist_ok=True)
        text = sub.model_dump_json(indent=2)
        if not (folder / "recipe.json").exists() or (folder / "recipe.json").read_text() != text:
            write_atomic(folder / "recipe.json", text)
        ctx.reporter.note(f"round {k} of {recipe.rounds.count}: {folder}")
        with using(out=str(folder), recipe=sub) as c:
            prompts = written_prompts(draw.prompts(k), c, {"round": k, "draw": recipe.rounds.prompts}, draw)
            judged = run_stages(c, "judge", prompts=prompts).reports
        reports += tagged(k, judged)
        reports += measured(ctx, held, k - 1)
        with using(out=str(folder), recipe=sub) as c:
            reports += tagged(k, run_stages(c, "train", prompts=prompts).reports[len(judged):])
    reports += answered(ctx, draw, held, model_name(last), str(model_dir(out, last)))
    reports += measured(ctx, held, last)
    reports.append(run_step(TableStep(count=last), ctx)[1])
    return reports


def answered(ctx: RunContext, draw: Draw, held: HeldOut, name: str, model: str) -> list[StageReport]:
    """A model's held-out answers, then, on the same load, its MT-Bench answers (with `rounds.mt_bench`)."""
    return held_out_answers(ctx, draw, held, name, model) + mt_bench_answers(ctx, name, model)


def measured(ctx: RunContext, held: HeldOut, k: int) -> list[StageReport]:
    """Round k's held-out answers judged (and the dSFT model's, with round 1), then round k measured."""
    reports = []
    for name in ([DSFT] if k == 1 else []) + [model_name(k)]:
        reports += held_out_verdicts(ctx, held, name)
    ctx.reporter.stage(f"round {k}: measure")
    return reports + [run_step(MeasureStep(k=k, held=held), ctx)[1]]


@flow(name="rlaif-rounds", log_prints=False)
def rounds_flow(recipe, out: str) -> list[StageReport]:
    """Every round of a recipe with `rounds:` into `out` (`rlaif run`)."""
    with flow_run(recipe, out) as ctx:
        return run_rounds(ctx)
