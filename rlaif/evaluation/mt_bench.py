"""MT-Bench for trained models, as FastChat runs it: both turns answered, each graded 1-10 by a judge.

Usage:

    rlaif evaluate runs/quickstart --mt-bench [--limit 8] [--judge NAME] [--model [NAME=]PATH ...]
    run_mt_bench(out_dir, run_models(run_dir, recipe), judge_spec, ctx, limit=8)

What happens, as FastChat's gen_model_answer.py, gen_judgment.py and show_result.py do it:

- answers: each model answers the questions' first turns, then each second turn after its own
  first answer (the conversation [question 1, its answer, question 2]), with its chat template (a
  model without one, a base model, answers through URIAL as in generation), at FastChat's
  temperature per category (0.7 writing and roleplay, 0.1 STEM and humanities, else 0: greedy),
  at most `max_tokens` each (FastChat: 1024).
- grading: FastChat's single-answer prompts, unchanged (single-v1; single-math-v1, which shows
  GPT-4's reference answer, for math, reasoning and coding; their -multi-turn variants on turn 2,
  which show both turns), by any judge of the recipe, local (vLLM) or hosted (an endpoint), through
  the engine pool. Of the judge's block only its model, endpoint, engine, `structured`, re-asks and
  `explanation_chars` count: the prompts and the 1-10 scale are MT-Bench's, and a judge of another
  kind answers in MT-Bench's format (explanation, then [[rating]]) at temperature 0. The score is
  the rating the judge wrote, as FastChat's.
- scores: per model, the mean over turn 1, over turn 2, and over both (`score`: MT-Bench's number),
  and per category over both turns; gradings that failed or did not parse are counted, never scored.
  Beside it, `expected`: the mean of the judge's expected rating (from its rating token's
  probabilities, where the engine returns them), which tells models apart when a small judge's
  written ratings collapse onto one value.
- `limit`: N questions taken round-robin over the 8 categories (8: one of each), for quick runs.

Models of a run (`run_models`): `base` (what dSFT started from, train.sft.model), `dsft` (<run>/sft)
and `ddpo` (<run>/dpo), and on-policy rounds' later models `round-<k>` (<run>/rounds/<k>/dpo), those
that exist; or any models given by path or name. A recipe's `rounds.mt_bench` runs it in each
round's measurement instead (flows/rounds.py), its shards under <run>/rounds/mt_bench/.

Everything is kept as shards under `out_dir` (a run's eval/mt_bench/), one per model and turn, so
a rerun computes only what is missing or failed transiently, whatever `limit` was before:
completions/ (answers, each kept while its prompt, the model's files and its sampling are
unchanged: a model retrained in place answers again; a turn-2 prompt holds the turn-1 answer) and
judgements/<judge>/ (verdicts, each kept while the exact prompt it graded is unchanged). Results
per judge: scores.<judge>.json, table.<judge>.md, radar.<judge>.png (one polygon per model over the
8 categories, FastChat's plot; drawn when every model has a score in each).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlaif.core.errors import ConfigError
from rlaif.core.records import Completion, Judgement, Message, Prompt, content_hash
from rlaif.core.store import RunStore, write_atomic, write_json
from rlaif.engines.base import Sampling
from rlaif.engines.pool import EnginePool
from rlaif.generation.ensemble import GeneratorSpec, completion, request
from rlaif.judges.base import Answer, Ask, pointwise_judgement
from rlaif.judges.kinds.mt_bench import MTBenchSingle
from rlaif.evaluation.mt_bench_data import (CATEGORIES, LABELS, MTBenchQuestion, category_scores, load_mt_bench,
                                        single_judge_messages, write_radar)
from rlaif.judges.parsing import rating_format
from rlaif.judges.spec import JudgeSpec
from rlaif.judges.stage import ask
from rlaif.runners.context import RunContext

log = logging.getLogger(__name__)

# FastChat's gen_model_answer.py temperature_config
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
               "stem": 0.1, "humanities": 0.1}
MAX_TOKENS = 1024  # FastChat's max_new_tokens
ANSWERS = "completions"


@dataclass(frozen=True)
class ModelUnderTest:
    label: str  # how the table, the plot and the records name it
    model: str  # a bundled name, a local model dir or a hub id


class Answerer(GeneratorSpec):
    """A model answering MT-Bench: a generator whose shards are keyed by its files too."""

    weights: str = ""  # what the model's files are (see `model_key`)

    def settings_hash(self) -> str:
        return content_hash(super().settings_hash(), self.weights)


# ----------------------------------------------------------------------------- which models, which questions
def run_models(run_dir: str | Path, recipe: Any, variant: str | None = None) -> list[ModelUnderTest]:
    """base (what dSFT started from: train.sft.model, else as <run>/sft records it, else train.dpo.model),
    dsft (<run>/sft), ddpo (<run>/dpo): those there are. A sweep's variants (<run>/dpo/<name>) are
    `ddpo-<name>`: `variant` alone, else every trained one. A series of on-policy rounds' later models
    (<run>/rounds/<k>/dpo, flows/rounds.py) are `round-<k>` (round 1's is `ddpo`)."""
    from rlaif.training.common import stage_state

    run = Path(run_dir)
    train = recipe.train
    base = (train.sft.model if train.sft is not None else (stage_state(run / "sft") or {}).get("start_model")
            or (train.dpo.model if train.dpo is not None else None))
    models = [ModelUnderTest("base", base)] if base else []
    sweep = [p.parent.name for p in sorted((run / "dpo").glob("*/config.json"))] if variant is None else [variant]
    rounds = sorted(int(p.name) for p in (run / "rounds").glob("*") if p.name.isdigit()) if variant is None else []
    for label, stage in (("dsft", "sft"), ("ddpo", "dpo"), *((f"ddpo-{v}", f"dpo/{v}") for v in sweep),
                         *((f"round-{k}", f"rounds/{k}/dpo") for k in rounds)):
        if (run / stage / "config.json").exists():
            models.append(ModelUnderTest(label, str(run / stage)))
        elif (run / stage / "adapter").is_dir():
            log.warning("%s: only a LoRA adapter (QLoRA), no merged model to serve; not evaluated", run / stage)
    if not models:
        raise ConfigError(f"{run}: no models to evaluate (no train.sft.model, no sft/ or dpo/ model); "
                          f"train first, or name models with --model")
    return models


def parse_models(values: list[str]) -> list[ModelUnderTest]:
    """`--model [NAME=]PATH` values; NAME defaults to the path's last part."""
    out = []
    for v in values:
        name, sep, model = v.partition("=")
        if not sep:
            name, model = Path(v.rstrip("/")).name or v, v
        out.append(ModelUnderTest(name, model))
    names = [m.label for m in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"--model: two models named alike {names}; name them: --model NAME=PATH")
    return out


def select_questions(limit: int | None = None) -> list[MTBenchQuestion]:
    """All 80 questions, or `limit` of them taken round-robin over the categories (in id order)."""
    questions = sorted(load_mt_bench().values(), key=lambda q: q.question_id)
    if not limit:
        return questions
    by_category = {c: [q for q in questions if q.category == c] for c in CATEGORIES}
    rounds = [by_category[c][i] for i in range(max(map(len, by_category.values())))
              for c in CATEGORIES if i < len(by_category[c])]
    return sorted(rounds[:limit], key=lambda q: q.question_id)


def model_key(model: str) -> str:
    """What a model's files are: names, sizes and modification times of its folder's files (a hub id:
    of its snapshot in the local Hugging Face cache; one not downloaded here: its id)."""
    from rlaif.engines.models import model_files

    path = model_files(model)
    if path is None:
        return model
    skip = {"rlaif-stage.json", "trainer_state.json"}  # written after the weights, never read to answer
    return content_hash([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir())
                         if p.is_file() and p.name not in skip])


def has_chat_template(model: str) -> bool:
    """Whether the model's tokenizer has a chat template, read from its files wherever they are
    (bundled, a local directory, a hub id in the local Hugging Face cache or fetched from the hub:
    only those small files); a base model without one answers through URIAL. A model whose files
    cannot be read here is assumed to have one, with a warning."""
    from rlaif.engines.models import TOKENIZER_FILES, chat_template_in, model_files

    path = model_files(model, fetch=TOKENIZER_FILES)
    if path is None:
        log.warning("%s: its tokenizer files are not on this machine nor on a hub in reach; "
                    "assumed to have a chat template", model)
        return True
    return chat_template_in(path)


# ----------------------------------------------------------------------------- answering
def _prompt(q: MTBenchQuestion, turn: int, first_answer: str = "") -> Prompt:
    messages = [Message(role="user", content=q.turns[0])]
    if turn == 2:
        messages += [Message(role="assistant", content=first_answer), Message(role="user", content=q.turns[1])]
    return Prompt(prompt_id=f"mt_bench-{q.question_id}-turn{turn}", messages=messages, source=f"mt_bench:{q.category}")


def answer_questions(store: RunStore, m: ModelUnderTest, questions: list[MTBenchQuestion], ctx: RunContext,
                     max_tokens: int, ask: bool = True) -> dict[int, list[Completion]] | None:
    """question id -> [turn-1 answer, turn-2 answer] (turn 2 only after a usable turn 1), on the
    context's engines (`ctx.pool`, the recipe's engine settings `ctx.engine`, `ctx.seed`).

    One shard per model and turn, its answers kept by completion id (the prompt, the model's files
    and its sampling), so only what is missing or failed transiently is asked, all in one batch.
    `ask=False` asks nothing and loads nothing: the answers when all are there, else None."""
    pool, engine, seed, report = ctx.pool, ctx.engine, ctx.seed, ctx.reporter
    weights = model_key(m.model)
    fmt = "chat" if has_chat_template(m.model) else "urial"
    members = {t: Answerer(name=m.label, model=m.model, format=fmt, weights=weights,
                           sampling=Sampling(temperature=t, top_p=1.0, max_tokens=max_tokens, seed=seed))
               for t in set(TEMPERATURE.values())}

    def answer(turn: int, prompts: dict[int, Prompt]) -> dict[int, Completion] | None:
        key = content_hash("answers", m.label, weights, turn)
        info = store.info(ANSWERS, key, Completion)
        old = {c.completion_id: c for c in store.read(ANSWERS, key, Completion)} if info is not None else {}
        wanted = {}
        for qid, p in prompts.items():
            spec = members[TEMPERATURE[by_id[qid].category]]
            wanted[qid] = (spec, p, content_hash(p.prompt_id, p.hash, spec.settings_hash()))
        todo = [(spec, p) for spec, p, cid in wanted.values() if cid not in old or old[cid].retryable]
        if todo and not ask:
            return None
        if todo:
            first = next(iter(members.values()))
            task = report.task(f"{m.label} turn {turn}", len(todo))
            results = pool.get(first.engine_spec(engine)).generate([request(spec, p) for spec, p in todo], task)
            new = [completion(spec, spec.settings_hash(), p, r) for (spec, p), r in zip(todo, results)]
            old.update({c.completion_id: c for c in new})
            store.write(ANSWERS, key, list(old.values()), name=m.label)
        return {qid: old[cid] for qid, (_, _, cid) in wanted.items()}

    by_id = {q.question_id: q for q in questions}
    first = answer(1, {q.question_id: _prompt(q, 1) for q in questions})
    if first is None:
        return None
    second = answer(2, {qid: _prompt(by_id[qid], 2, c.text) for qid, c in first.items() if c.ok})
    if second is None:
        return None
    return {qid: [c] + ([second[qid]] if qid in second else []) for qid, c in first.items()}


# ----------------------------------------------------------------------------- grading
def mt_bench_judge(spec: JudgeSpec) -> JudgeSpec:
    """The recipe's judge, asked MT-Bench's questions: its model and engine, MT-Bench's kind and format."""
    if not spec.impl.text:
        raise ConfigError(f"judge {spec.name!r} is a {spec.kind}: MT-Bench needs a judge that writes text")
    if spec.kind == MTBenchSingle.name:
        return spec
    data = spec.model_dump(exclude={"kind", "template", "template_version", "sampling", "options", "mode"})
    # bounded by the regex when structured; free text needs room for the explanation before [[rating]]
    tokens = MTBenchSingle.max_tokens if spec.structured else MAX_TOKENS
    return JudgeSpec(**data, kind=MTBenchSingle.name, sampling=Sampling(temperature=0.0, max_tokens=tokens,
                                                                         seed=spec.sampling.seed))


@dataclass
class Grading:
    """One model's turn: its shard of verdicts and what to ask."""

    model: ModelUnderTest
    turn: int
    key: str
    asks: dict[str, tuple[Ask, Completion, int]]  # verdict id -> (ask, the answer graded, question id)
    kept: dict[str, Judgement]  # verdicts already on disk for exactly these asks
    old: dict[str, Judgement]  # every verdict in the shard


def grade(store: RunStore, answers: dict[str, dict[int, list[Completion]]], models: list[ModelUnderTest],
          questions: list[MTBenchQuestion], spec: JudgeSpec, ctx: RunContext) -> dict[str, dict[int, dict[int, Judgement]]]:
    """label -> turn -> question id -> the verdict; only asks never answered (or failed transiently) go out."""
    pool, engine, seed, report = ctx.pool, ctx.engine, ctx.seed, ctx.reporter
    stage, settings = f"judgements/{spec.name}", spec.settings_hash()
    fmt = rating_format(*MTBenchSingle.scale, spec.options.explanation_chars)
    by_id = {q.question_id: q for q in questions}
    gradings = []
    for m in models:
        for turn in (1, 2):
            asks = {}
            for qid, turns in answers[m.label].items():
                if len(turns) < turn or not all(c.ok for c in turns[:turn]):
                    continue
                _, messages = single_judge_messages(by_id[qid], [c.text for c in turns[:turn]], turn)
                vid = content_hash(settings, messages)
                asks[vid] = (Ask(f"{vid}|overall", vid, messages, fmt), turns[turn - 1], qid)
            key = content_hash(settings, m.label, model_key(m.model), turn)
            info = store.info(stage, key, Judgement)
            old = {j.judgement_id: j for j in store.read(stage, key, Judgement)} if info is not None else {}
            kept = {vid: old[vid] for vid in asks if vid in old and not old[vid].retryable}
            gradings.append(Grading(m, turn, key, asks, kept, old))
    todo = [g.asks[vid][0] for g in gradings for vid in g.asks if vid not in g.kept]
    report.note(f"MT-Bench judge {spec.name}: {sum(len(g.asks) for g in gradings) - len(todo)} of "
                f"{sum(len(g.asks) for g in gradings)} gradings already done")
    replies: dict[str, Answer] = {}
    if todo:
        judge_engine = pool.get(spec.engine_spec(engine))
        task = report.task(f"MT-Bench judge {spec.name}", len(todo))
        replies = ask(spec, judge_engine, todo, seed, task)
    out: dict[str, dict[int, dict[int, Judgement]]] = defaultdict(dict)
    for g in gradings:
        records = dict(g.old)  # verdicts of questions not asked this time (another --limit) stay
        for vid, (a, c, qid) in g.asks.items():
            if vid in g.kept:
                records[vid] = g.kept[vid]
                continue
            j = pointwise_judgement(spec, settings, MTBenchSingle.scale, c, {"overall": replies[a.key]})
            records[vid] = j.model_copy(update={"judgement_id": vid})
        if len(g.kept) < len(g.asks):
            store.write(stage, g.key, list(records.values()), name=g.model.label)
        out[g.model.label][g.turn] = {qid: records[vid] for vid, (_, _, qid) in g.asks.items()}
    return out


# ----------------------------------------------------------------------------- scores, table, radar
def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rating(j: Judgement | None) -> float | None:
    """The rating the judge wrote (FastChat's score), or None for a grading that failed or did not parse."""
    if j is None or j.status != "parsed":
        return None
    return j.aspects["overall"].rating


def model_scores(m: ModelUnderTest, questions: list[MTBenchQuestion], verdicts: dict[int, dict[int, Judgement]]) -> dict:
    rows = [(q.question_id, turn, rating(verdicts.get(turn, {}).get(q.question_id)))
            for q in questions for turn in (1, 2)]
    graded = [(qid, turn, r) for qid, turn, r in rows if r is not None]
    status = [verdicts.get(turn, {}).get(qid) for qid, turn, _ in rows]
    expected = [j.aspects["overall"].expected for j in status if rating(j) is not None]
    return {"model": m.model, "score": _mean([r for *_, r in graded]),
            "expected": _mean(expected) if None not in expected else None,
            "turn_1": _mean([r for _, t, r in graded if t == 1]), "turn_2": _mean([r for _, t, r in graded if t == 2]),
            "categories": category_scores(graded), "turns": len(rows), "graded": len(graded),
            "unparsed": sum(j is not None and j.status == "unparsed" for j in status),
            "failed": sum(j is not None and j.status == "failed" for j in status),
            "unanswered": sum(j is None for j in status)}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def table_rows(scores: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The results table: one row per model (as show_result.py's, with the categories beside)."""
    header = ["model", "score", "turn 1", "turn 2", *(LABELS[c] for c in CATEGORIES), "graded", "expected"]
    rows = [[label, _fmt(s["score"]), _fmt(s["turn_1"]), _fmt(s["turn_2"]),
             *(_fmt(s["categories"].get(c)) for c in CATEGORIES), f"{s['graded']}/{s['turns']}", _fmt(s["expected"])]
            for label, s in scores.items()]
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def run_mt_bench(out_dir: str | Path, models: list[ModelUnderTest], judge: JudgeSpec, ctx: RunContext | None = None,
                 limit: int | None = None, max_tokens: int = MAX_TOKENS) -> dict:
    """Answer, grade, score on the context's engines (a pool of its own when it has none); writes
    the results beside the shards and returns them (see the module doc)."""
    from contextlib import nullcontext

    ctx = ctx or RunContext()
    engine, report = ctx.engine, ctx.reporter
    out = Path(out_dir)
    store, spec, questions = RunStore(out), mt_bench_judge(judge), select_questions(limit)
    judge_engine = spec.engine_spec(engine)
    # the judge's model last: its engine is still loaded when grading starts
    order = sorted(models, key=lambda m: Answerer(name=m.label, model=m.model).engine_spec(engine).key == judge_engine.key)
    with nullcontext(ctx.pool) if ctx.pool is not None else EnginePool(seed=ctx.seed) as engines:
        ctx = replace(ctx, pool=engines)
        answers = {}
        for m in order:
            report.stage(f"MT-Bench answers ({m.label})")
            answers[m.label] = answer_questions(store, m, questions, ctx, max_tokens)
        report.stage(f"MT-Bench grading ({spec.name})")
        verdicts = grade(store, answers, models, questions, spec, ctx)
    scores = {m.label: model_scores(m, questions, verdicts[m.label]) for m in models}
    header, rows = table_rows(scores)
    name = spec.name
    result = {"judge": name, "judge_model": spec.model, "questions": [q.question_id for q in questions],
              "limit": limit, "max_tokens": max_tokens, "models": scores,
              "table": str(write_atomic(out / f"table.{name}.md", markdown_table(header, rows))), "radar": None}
    complete = {label: s["categories"] for label, s in scores.items() if len(s["categories"]) == len(CATEGORIES)}
    if complete and len(complete) == len(scores):
        result["radar"] = str(write_radar(out / f"radar.{name}.png", complete))
    else:
        result["radar_missing"] = "the radar needs a score in every category for every model (--limit 8 or more)"
    write_json(out / f"scores.{name}.json", result)
    return result
