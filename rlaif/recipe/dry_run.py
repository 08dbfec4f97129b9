"""`rlaif run RECIPE --dry-run`: what a run would send, and what it would cost, before anything is sent.

Per stage and model: the number of requests, the input tokens they carry (estimated at 4
characters a token: no tokenizer and no model is loaded), the output tokens they may write (each
request's max_tokens: an upper bound), and their cost where the endpoint gives prices per million
tokens (times `batch_discount` with `batch: true`). The prompts are read from their source before
hygiene (which can only remove some); the judges' requests are built by their kinds exactly as the
run would build them, from stand-in completions as long as each member's max_tokens (again an upper
bound). A judge's `sentinels` are a row of their own: what each run that judges something new
sends again. Re-asks of unparsed verdicts, Prefect retries and a reasoning model's hidden reasoning
tokens are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.core.records import Completion, Prompt
from rlaif.engines.backend import EngineSpec
from rlaif.recipe.spec import Recipe
from rlaif.generation.ensemble import assign, request
from rlaif.prompts.prompt_sets import load_prompts
from rlaif.judges.sentinels import order
from rlaif.judges.spec import JudgeSpec

CHARS_PER_TOKEN = 4


@dataclass
class Estimate:
    stage: str
    name: str  # the member's or judge's name in the recipe
    model: str
    where: str  # "local", or the endpoint (and "batch")
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0  # at most
    cost: float | None = None  # dollars, where the endpoint has prices

    def add(self, text_chars: int, max_tokens: int) -> None:
        self.requests += 1
        self.input_tokens += text_chars // CHARS_PER_TOKEN
        self.output_tokens += max_tokens

    def price(self, engine: EngineSpec | None) -> Estimate:
        if engine is not None:
            self.cost = engine.backend.cost(engine, self.input_tokens, self.output_tokens)
        return self


def _where(engine: EngineSpec | None) -> str:
    return engine.backend.where(engine) if engine is not None else "local"


def _chars(messages: list[dict] | None, prompt: str | None) -> int:
    if messages is None:
        return len(prompt or "")
    return sum(len(str(m.get("content", ""))) for m in messages)


def estimate(recipe: Recipe) -> list[Estimate]:
    """Every stage that sends requests, per member and judge, as `rlaif run` would send them."""
    if not recipe.makes_data:  # a recipe that only trains sends no requests
        return []
    p = recipe.prompts
    prompts = load_prompts(p.source, p.limit, p.split)
    assigned = assign(prompts, recipe.generators, recipe.models_per_prompt, recipe.seed)
    out, stand_ins = [], {}
    for g in recipe.generators:
        engine = g.engine_spec(recipe.engine)
        e = Estimate("generate", g.name, g.model, _where(engine))
        for prompt in assigned[g.name]:
            r = request(g, prompt)
            e.add(_chars(r.messages, r.prompt), r.sampling.max_tokens)
            stand_ins.setdefault(prompt.prompt_id, []).append(Completion(
                completion_id=f"{g.name}/{prompt.prompt_id}", prompt_id=prompt.prompt_id, prompt_hash=prompt.hash,
                model=g.name, settings_hash="", text="x" * (g.sampling.max_tokens * CHARS_PER_TOKEN)))
        out.append(e.price(engine))
    run_judge = recipe.judge_spec().name
    for spec in recipe.judges:
        stage = "judge" if spec.name == run_judge else "judge (rlaif judge)"
        engine = spec.engine_spec(recipe.engine)
        out.append(_judge(spec, stage, prompts, stand_ins, engine).price(engine))
        if spec.sentinels:  # judged again by every run that judges something new (judges/sentinels.py)
            drawn = sorted(prompts, key=lambda p: order(recipe.seed, p.prompt_id))[:spec.sentinels]
            where = "sentinels (each run)" if spec.name == run_judge else "sentinels (rlaif judge)"
            out.append(_judge(spec, where, drawn, stand_ins, engine).price(engine))
    return out


def _judge(spec: JudgeSpec, stage: str, prompts: list[Prompt], completions: dict[str, list[Completion]],
           engine: EngineSpec | None) -> Estimate:
    e = Estimate(stage, spec.name, spec.model, _where(engine))
    kind = spec.impl
    for prompt in prompts:
        prompt_completions = completions.get(prompt.prompt_id, [])
        if not kind.text:  # a reward model scores each conversation locally
            for c in prompt_completions:
                e.add(_chars([m.model_dump() for m in prompt.messages], None) + len(c.text or ""), 0)
            continue
        for a in kind.asks(spec, prompt, prompt_completions):
            e.add(_chars(a.messages, None), a.max_tokens or spec.sampling.max_tokens)
    return e
