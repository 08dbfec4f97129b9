"""What a judge kind is, and what every kind shares.

A kind is one module (plus its template), shaped like a distilabel task; defining its class
registers it (the built-in ones live in `rlaif/judges/kinds/`, where the registry finds them). It
declares:

    inputs     a prompt and one completion (`PointwiseKind`) or two (`PairwiseKind`, `pairwise =
               True`: its records are `PairJudgement`s); an ask may cover several completions
               (UltraFeedback's joint rating: all of a prompt's at once)
    template   the versioned template its messages are built from, its default version, and where
               its template files are (`template_dir`; default: rlaif/prompts/templates)
    output     the format it must write (`parsing.OutputFormat`): a JSON schema or a regex, the
               verdict's values, a tolerant pattern for free text
    options    its own settings, a pydantic model: the `options:` of a recipe's judge block
               (UltraFeedback's aspects, MT-Bench's explanation bound, a reward model's max_length)
    score      how a judgement's score is read (default: the mean over its aspects; a reward
               model's scalar is its score under every source)
    defaults   max_tokens, the scale of its scores

and turns its parsed answers into `Judgement` / `PairJudgement` records. It never asks which engine
runs its requests: the judge stage (judges/stage.py) sends them, re-asks what did not parse, and
hands the answers back. A kind that is not a text generator (a reward model) sets `text = False`,
overrides `judge_group` and brings its own scorer.

Kinds read the judge block through `JudgeBlock` (what judges.spec.JudgeBlock offers them), so this
module does not import the spec, which imports the kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from rlaif.core.records import (AspectRating, Completion, Judged, Judgement, PairJudgement, PairVerdict, Prompt,
                                ScoreSource, content_hash)
from rlaif.engines.base import Sampling
from rlaif.engines.config import Endpoint
from rlaif.judges.parsing import OutputFormat, Parsed, expected_value
from rlaif.prompts import Template, load_template


class JudgeBlock(Protocol):
    """What a kind reads of a recipe's judge block (judges.spec.JudgeBlock)."""

    name: str
    kind: str
    model: str
    endpoint: Endpoint | None
    mode: str | None
    template: str | None
    template_version: str | None
    sampling: Sampling
    options: Any  # the kind's own `options` model
    templates_dir: str | None  # the recipe's templates_dir, if it names one

    def settings_hash(self) -> str: ...

    def judge_template(self) -> Template: ...


class NoOptions(BaseModel):
    """A kind without settings of its own: its `options:` must be empty."""

    model_config = ConfigDict(extra="forbid")


defined: dict[str, type[JudgeKind]] = {}  # kind name -> class: every kind defined in this process


# a judgement of a completion that has no text: its failure is the generation's, counted there
COMPLETION_FAILED = "completion failed: "


@dataclass(frozen=True)
class Ask:
    """One request a kind wants answered: `units` are the records it feeds (completions or a pair)."""

    key: str  # unique within a shard
    units: tuple[str, ...]
    messages: list[dict]
    fmt: OutputFormat
    max_tokens: int | None = None  # room for the answer, if not the judge's sampling.max_tokens
    row: str = ""  # the prompt id it is about (set by the judge stage): what an error names


@dataclass(frozen=True)
class Answer:
    """What came back for one ask after its re-asks."""

    parsed: Parsed | None  # None: the request itself failed (see error)
    retries: int = 0
    error: str | None = None
    retryable: bool = False
    served: dict[str, str] | None = None  # what answered (engines.base.Result.served)


def provenance(spec: JudgeBlock, settings: str) -> dict[str, Any]:
    """The fields every verdict record carries to say who judged and how."""
    t = spec.judge_template()
    return dict(judge=spec.name, kind=spec.kind, judge_model=spec.model, template=t.name, template_version=t.version,
                template_hash=t.hash, settings_hash=settings, sampling=spec.sampling.model_dump())


def pair_id(a: Completion, b: Completion) -> str:
    return content_hash(a.completion_id, b.completion_id)


def record_unit(r: Judged) -> str:
    """The unit a record judges: its completion, or its pair."""
    if isinstance(r, PairJudgement):
        return content_hash(r.completion_a, r.completion_b)
    return r.completion_id  # type: ignore[attr-defined]


class JudgeKind:
    name: str = ""
    pairwise: bool = False  # judges two completions at once: PairJudgement records
    template: str = ""  # default template name and version (<template_dir>/<name>.<version>.*)
    template_dir: ClassVar[Path | None] = None  # None: rlaif/prompts/templates
    version: str = "v1"
    max_tokens: int = 96  # room for the bounded free text plus the JSON around it
    scale: tuple[float, float] | None = None
    text: bool = True  # False: not judged by a text engine (see judge_group)
    modes: tuple[str, ...] = ()  # the `mode`s a kind offers (UltraFeedback: per_completion, joint)
    options: ClassVar[type[BaseModel]] = NoOptions  # its settings: `options:` in the judge block

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):  # a concrete kind (not PointwiseKind, PairwiseKind)
            defined[cls.name] = cls

    @property
    def record_type(self) -> type[Judged]:
        return PairJudgement if self.pairwise else Judgement

    def score(self, j: Judgement, source: ScoreSource = "auto", aspect: str | None = None) -> float | None:
        """A pointwise judgement's score: by default the mean over its aspects, or one `aspect`
        (`Judgement.score`); a kind whose verdicts are read another way overrides this."""
        return j.score(source, aspect)

    def default_mode(self, spec: JudgeBlock) -> str | None:
        return None

    def default_template(self, spec: JudgeBlock) -> str:
        return self.template

    def template_for(self, spec: JudgeBlock) -> Template:
        return load_template(spec.template, spec.template_version, spec.templates_dir, self.template_dir)

    def validate(self, spec: JudgeBlock) -> None:
        """Fail at recipe load if the spec cannot work (a template that does not exist, ...)."""
        if spec.mode is not None and spec.mode not in self.modes:
            offered = f"its modes: {list(self.modes)}" if self.modes else "it has no modes"
            raise ValueError(f"mode {spec.mode!r} is not a mode of the {self.name} kind ({offered})")
        self.template_for(spec)

    def hash_parts(self, spec: JudgeBlock) -> tuple:
        """Settings of this kind, beyond the common ones, that shape its verdicts: by default all
        of its options (none: nothing, so a kind without options keeps its hashes)."""
        options = spec.options.model_dump(mode="json")
        return (options,) if options else ()

    def output_format(self, spec: JudgeBlock) -> OutputFormat:
        raise NotImplementedError

    def asks(self, spec: JudgeBlock, prompt: Prompt, completions: list[Completion]) -> list[Ask]:
        """Everything to ask about one prompt's completions."""
        raise NotImplementedError

    def records(self, spec: JudgeBlock, settings: str, prompt: Prompt, completions: list[Completion],
                answers: dict[str, Answer]) -> list[Judged]:
        """One prompt's records from the answers to its asks."""
        raise NotImplementedError

    def judge_group(self, spec: JudgeBlock, prompts: dict[str, Prompt], completions: list[Completion],
                    seed: int) -> list[Judged]:
        """Only for kinds with `text = False`: judge a chunk's completions without a text engine."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- one completion at a time
class PointwiseKind(JudgeKind):
    """Rates each completion on its own: one ask per completion per aspect."""

    def completion_asks(self, spec: JudgeBlock, prompt: Prompt, c: Completion) -> list[tuple[str, list[dict]]]:
        """(aspect, messages) for one completion."""
        raise NotImplementedError

    def asks(self, spec: JudgeBlock, prompt: Prompt, completions: list[Completion]) -> list[Ask]:
        fmt = self.output_format(spec)
        return [Ask(f"{c.completion_id}|{aspect}", (c.completion_id,), messages, fmt)
                for c in completions if c.ok for aspect, messages in self.completion_asks(spec, prompt, c)]

    def records(self, spec: JudgeBlock, settings: str, prompt: Prompt, completions: list[Completion],
                answers: dict[str, Answer]) -> list[Judged]:
        out = []
        for c in completions:
            by_aspect = {k.split("|", 1)[1]: a for k, a in answers.items() if k.split("|", 1)[0] == c.completion_id}
            out.append(pointwise_judgement(spec, settings, self.scale, c, by_aspect))
        return out


def aspect_rating(answer: Answer) -> AspectRating:
    p = answer.parsed
    if p is None:
        return AspectRating(raw="")
    rating = float(p.value) if p.value is not None else None
    return AspectRating(rating=rating, rationale=p.text, probs=p.probs, expected=expected_value(p.probs), raw=p.raw)


def pointwise_judgement(spec: JudgeBlock, settings: str, scale: tuple[float, float] | None, c: Completion,
                        answers: dict[str, Answer], orders: dict[str, list[str]] | None = None) -> Judgement:
    """One completion's record from its aspects' answers (or the reason there are none); `orders`:
    per aspect, the completions in the order a joint ask showed them."""
    base = dict(judgement_id=content_hash(c.completion_id, settings), completion_id=c.completion_id,
                prompt_id=c.prompt_id, model=c.model, scale=scale, **provenance(spec, settings))
    if not c.ok:
        return Judgement(**base, aspects={}, status="failed", error=f"{COMPLETION_FAILED}{c.error}")
    failed = {k: a for k, a in answers.items() if a.parsed is None}
    aspects = {k: aspect_rating(a).model_copy(update={"order": (orders or {}).get(k)}) for k, a in answers.items()}
    base["score_source"] = "expected" if aspects and all(a.expected is not None for a in aspects.values()) \
        else "sampled"
    retries = max((a.retries for a in answers.values()), default=0)
    if failed or not answers:
        first = next(iter(failed.values()), Answer(None, error="no answer"))
        return Judgement(**base, aspects=aspects, status="failed", retries=retries,
                         error=f"judge request failed: {first.error}",
                         retryable=any(a.retryable for a in failed.values()))
    unparsed = [k for k, a in aspects.items() if a.rating is None]
    return Judgement(**base, aspects=aspects, status="unparsed" if unparsed else "parsed", retries=retries,
                     error=("unparsed: " + ", ".join(unparsed)) if unparsed else None)


# ----------------------------------------------------------------------------- two completions at a time
def pairs_of(completions: list[Completion]) -> list[tuple[Completion, Completion]]:
    """Every pair of usable completions of the same prompt, in the order they were generated."""
    return list(combinations([c for c in completions if c.ok], 2))


class PairwiseKind(JudgeKind):
    """Compares two completions of a prompt, in both orders, so position bias cancels."""

    pairwise = True

    def pair_messages(self, spec: JudgeBlock, prompt: Prompt, first: Completion, second: Completion) -> list[dict]:
        raise NotImplementedError

    def pair_asks(self, spec: JudgeBlock, prompt: Prompt, a: Completion, b: Completion) -> list[Ask]:
        """The pair in both orders: (a shown first, b second) and (b first, a second)."""
        fmt, pid = self.output_format(spec), pair_id(a, b)
        return [Ask(f"{pid}|{order}", (pid,), self.pair_messages(spec, prompt, first, second), fmt)
                for order, (first, second) in (("ab", (a, b)), ("ba", (b, a)))]

    def asks(self, spec: JudgeBlock, prompt: Prompt, completions: list[Completion]) -> list[Ask]:
        return [ask for a, b in pairs_of(completions) for ask in self.pair_asks(spec, prompt, a, b)]

    def records(self, spec: JudgeBlock, settings: str, prompt: Prompt, completions: list[Completion],
                answers: dict[str, Answer]) -> list[Judged]:
        missing = Answer(None, error="no answer")
        return [pair_judgement(spec, settings, a, b, {o: answers.get(f"{pair_id(a, b)}|{o}", missing) for o in ("ab", "ba")})
                for a, b in pairs_of(completions)]


def _verdict(first: str, second: str, answer: Answer) -> PairVerdict:
    p = answer.parsed
    if p is None or p.value is None:
        return PairVerdict(first=first, second=second, raw=p.raw if p else "")
    winner = {"A": "first", "B": "second", "C": "tie"}[p.value]
    p_first = p.probs.get("A", 0.0) + 0.5 * p.probs.get("C", 0.0) if p.probs else None
    return PairVerdict(first=first, second=second, winner=winner, p_first=p_first, rationale=p.text, raw=p.raw)


def pair_judgement(spec: JudgeBlock, settings: str, a: Completion, b: Completion,
                   answers: dict[str, Answer]) -> PairJudgement:
    """Both orders combined: they must agree, else a tie; P(a better) is their mean."""
    base = dict(judgement_id=content_hash(pair_id(a, b), settings), prompt_id=a.prompt_id,
                completion_a=a.completion_id, completion_b=b.completion_id, model_a=a.model, model_b=b.model,
                **provenance(spec, settings))
    ab, ba = answers["ab"], answers["ba"]
    orders = [_verdict(a.completion_id, b.completion_id, ab), _verdict(b.completion_id, a.completion_id, ba)]
    retries = max(ab.retries, ba.retries)
    if ab.parsed is None or ba.parsed is None:
        return PairJudgement(**base, orders=orders, status="failed", retries=retries,
                             error=f"judge request failed: {ab.error or ba.error}", retryable=ab.retryable or ba.retryable)
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
                         status="parsed", retries=retries, score_source="sampled" if p_a is None else "expected")
