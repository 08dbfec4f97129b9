"""What each judge kind asks and how its answers become records (as distilabel's tasks do).

A kind declares its inputs (a prompt and one completion, or a prompt and two), builds the chat
messages from its versioned template, names the output format it must write (`judges.parsing`),
and turns the parsed answers into a `Judgement` or `PairJudgement`. Running the requests (vLLM or
an endpoint, retries for unparsed output) is `judges.stage`'s job, the same for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from generation.records import AspectRating, Completion, Judgement, PairJudgement, PairVerdict, Prompt, content_hash
from judges.parsing import CRITIQUE, PAIRWISE, RATING, OutputFormat, Parsed, bracket_format, expected_value
from judges.spec import JudgeSpec, mt_bench_prompt


@dataclass(frozen=True)
class JudgeRequest:
    key: tuple[str, str]  # (completion id, aspect) or (pair id, "ab" | "ba")
    messages: list[dict]


@dataclass(frozen=True)
class Answer:
    """What came back for one request after its retries."""

    parsed: Parsed | None  # None: the request itself failed (see error)
    retries: int = 0
    error: str | None = None
    retryable: bool = False


def output_format(spec: JudgeSpec) -> OutputFormat:
    if spec.kind == "ultrafeedback":
        return RATING
    if spec.kind == "critique":
        return CRITIQUE
    if spec.kind == "pairwise":
        return PAIRWISE
    if spec.kind == "mt_bench_single":
        return bracket_format(tuple(str(i) for i in range(1, 11)), spec.explanation_chars)
    if spec.kind == "mt_bench_pairwise":
        return bracket_format(("A", "B", "C"), spec.explanation_chars)  # C: a tie
    raise ValueError(f"judge kind {spec.kind!r} has no text output")


def scale(spec: JudgeSpec) -> tuple[float, float] | None:
    return {"ultrafeedback": (1, 5), "critique": (1, 10), "mt_bench_single": (1, 10)}.get(spec.kind)


def _turns(prompt: Prompt) -> tuple[list[str], list[str]]:
    users = [m.content for m in prompt.messages if m.role == "user"]
    answers = [m.content for m in prompt.messages if m.role == "assistant"]
    return users, answers


def _mt_bench(spec: JudgeSpec, prompt: Prompt, **answers: str) -> list[dict]:
    """MT-Bench's prompt as published; its multi-turn variant for a second-turn prompt."""
    users, earlier = _turns(prompt)
    entry = mt_bench_prompt(spec.template)
    if len(users) >= 2 and earlier:
        entry = mt_bench_prompt(spec.template + "-multi-turn")
        values = {"question_1": users[-2], "question_2": users[-1]}
        for k, v in answers.items():  # answer -> answer_1 (shared history), answer_2 (this one)
            values[f"{k}_1"], values[f"{k}_2"] = earlier[-1], v
    else:
        values = {"question": users[-1], **answers}
    return [{"role": "system", "content": entry["system_prompt"]},
            {"role": "user", "content": entry["prompt_template"].format(**values)}]


def pointwise_requests(spec: JudgeSpec, prompt: Prompt, completion: Completion) -> list[JudgeRequest]:
    cid = completion.completion_id
    if spec.kind == "mt_bench_single":
        return [JudgeRequest((cid, "overall"), _mt_bench(spec, prompt, answer=completion.text))]
    template = spec.judge_template()
    if spec.kind == "critique":
        text = template.render(instruction=prompt.text, response=completion.text)
        return [JudgeRequest((cid, "overall"), [{"role": "user", "content": text.strip()}])]
    return [JudgeRequest((cid, aspect), [{"role": "user", "content": template.render(
        aspect=aspect, instruction=prompt.text, response=completion.text).strip()}]) for aspect in spec.aspects]


def pair_id(a: Completion, b: Completion) -> str:
    return content_hash(a.completion_id, b.completion_id)


def pair_requests(spec: JudgeSpec, prompt: Prompt, a: Completion, b: Completion) -> list[JudgeRequest]:
    """The pair in both orders: (a shown first, b second) and (b first, a second)."""
    pid = pair_id(a, b)
    out = []
    for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
        if spec.kind == "mt_bench_pairwise":
            messages = _mt_bench(spec, prompt, answer_a=first.text, answer_b=second.text)
        else:
            text = spec.judge_template().render(instruction=prompt.text, response_a=first.text, response_b=second.text)
            messages = [{"role": "user", "content": text.strip()}]
        out.append(JudgeRequest((pid, order), messages))
    return out


def _provenance(spec: JudgeSpec, settings: str) -> dict:
    t = spec.judge_template()
    return dict(judge=spec.name, kind=spec.kind, judge_model=spec.model, template=t.name,
                template_version=t.version, template_hash=t.hash, settings_hash=settings,
                sampling=spec.sampling.model_dump())


def aspect_rating(answer: Answer) -> AspectRating:
    p = answer.parsed
    if p is None:
        return AspectRating(raw="")
    rating = float(p.value) if p.value is not None else None
    return AspectRating(rating=rating, rationale=p.text, probs=p.probs, expected=expected_value(p.probs), raw=p.raw)


def pointwise_judgement(spec: JudgeSpec, settings: str, c: Completion,
                        answers: dict[str, Answer]) -> Judgement:
    """One completion's record from its aspects' answers (or the reason there are none)."""
    base = dict(judgement_id=content_hash(c.completion_id, settings), completion_id=c.completion_id,
                prompt_id=c.prompt_id, model=c.model, scale=scale(spec), **_provenance(spec, settings))
    if not c.ok:
        return Judgement(**base, aspects={}, status="failed", error=f"completion failed: {c.error}")
    failed = {k: a for k, a in answers.items() if a.parsed is None}
    aspects = {k: aspect_rating(a) for k, a in answers.items()}
    retries = max((a.retries for a in answers.values()), default=0)
    if failed:
        first = next(iter(failed.values()))
        return Judgement(**base, aspects=aspects, status="failed", retries=retries,
                         error=f"judge request failed: {first.error}",
                         retryable=any(a.retryable for a in failed.values()))
    unparsed = [k for k, a in aspects.items() if a.rating is None]
    return Judgement(**base, aspects=aspects, status="unparsed" if unparsed else "parsed", retries=retries,
                     error=("unparsed: " + ", ".join(unparsed)) if unparsed else None)


def _verdict(first: str, second: str, answer: Answer) -> PairVerdict:
    p = answer.parsed
    if p is None or p.value is None:
        return PairVerdict(first=first, second=second, raw=p.raw if p else "")
    winner = {"A": "first", "B": "second", "C": "tie"}[p.value]
    p_first = None
    if p.probs:
        p_first = p.probs.get("A", 0.0) + 0.5 * p.probs.get("C", 0.0)
    return PairVerdict(first=first, second=second, winner=winner, p_first=p_first, rationale=p.text, raw=p.raw)


def pair_judgement(spec: JudgeSpec, settings: str, a: Completion, b: Completion,
                   answers: dict[str, Answer]) -> PairJudgement:
    """Both orders combined: they must agree, else a tie; P(a better) is their mean."""
    base = dict(judgement_id=content_hash(pair_id(a, b), settings), prompt_id=a.prompt_id,
                completion_a=a.completion_id, completion_b=b.completion_id, model_a=a.model, model_b=b.model,
                **_provenance(spec, settings))
    ab, ba = answers["ab"], answers["ba"]
    orders = [_verdict(a.completion_id, b.completion_id, ab), _verdict(b.completion_id, a.completion_id, ba)]
    retries = max(ab.retries, ba.retries)
    if ab.parsed is None or ba.parsed is None:
        err = ab.error or ba.error
        return PairJudgement(**base, orders=orders, status="failed", retries=retries,
                             error=f"judge request failed: {err}", retryable=ab.retryable or ba.retryable)
    if orders[0].winner is None or orders[1].winner is None:
        return PairJudgement(**base, orders=orders, status="unparsed", retries=retries,
                             error="unparsed: " + ", ".join(o for o, v in zip(("ab", "ba"), orders) if v.winner is None))
    # as seen from a: order ab says first/second, order ba says it reversed
    from_a = [{"first": "a", "second": "b", "tie": "tie"}[orders[0].winner],
              {"first": "b", "second": "a", "tie": "tie"}[orders[1].winner]]
    winner = from_a[0] if from_a[0] == from_a[1] else "tie"
    p_a = None
    if orders[0].p_first is not None and orders[1].p_first is not None:
        p_a = (orders[0].p_first + (1.0 - orders[1].p_first)) / 2
    return PairJudgement(**base, orders=orders, winner=winner, p_a=p_a, order_changed_verdict=from_a[0] != from_a[1],
                         status="parsed", retries=retries)
