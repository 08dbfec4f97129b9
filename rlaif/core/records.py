"""Typed records that flow between stages, each carrying a content hash of what determines it.

A record's hash covers its inputs and every setting that shaped it (model, prompt format, sampling,
judge template version). Stages key their output shards on these hashes, so a stage whose inputs
and settings are unchanged finds its shard on disk and skips the work.

Every record says whether it is usable (`ok`) and whether it failed transiently (`retryable`: an
HTTP 429/5xx or a timeout), which is all the run store needs to tell a stage what is done.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def content_hash(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (pydantic models are dumped first)."""

    def plain(x: Any) -> Any:
        if isinstance(x, BaseModel):
            return x.model_dump(mode="json")
        if isinstance(x, (list, tuple)):
            return [plain(i) for i in x]
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        return x

    blob = json.dumps(plain(list(parts)), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def without_unset(data: Any, *keys: str) -> Any:
    """A settings block's dump without those of `keys` that are None: a field added later leaves the
    dumps (and so the hashes) of blocks that do not set it as they were before it existed."""
    if isinstance(data, dict):
        for k in keys:
            if data.get(k) is None:
                data.pop(k, None)
    return data


def derive_seed(*parts: Any) -> int:
    """A sampling seed from a recipe seed and what a request is about, stable across runs and shards."""
    return int(content_hash(*parts), 16) % (2**31)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def ok(self) -> bool:
        return True


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class Prompt(Record):
    """A conversation that ends with the user's turn; completions answer it."""

    prompt_id: str
    messages: list[Message]
    source: str = ""

    @property
    def hash(self) -> str:
        return content_hash(self.messages)

    @property
    def text(self) -> str:
        """The last user turn: what a judge shows as the instruction."""
        return self.messages[-1].content


class Completion(Record):
    """One model's answer to one prompt, or the error that stopped it (never dropped)."""

    completion_id: str  # hash of prompt hash + generator settings hash
    prompt_id: str
    prompt_hash: str
    model: str  # the ensemble member's name in the recipe
    settings_hash: str  # member name, model, prompt format, template version, sampling
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    retryable: bool = False  # a transient failure (HTTP 5xx/429, timeout): the next run tries again

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class AspectRating(Record):
    """One aspect's rating: the sampled value, its rationale, and the judge's probabilities."""

    rating: float | None = None  # the written rating; None when the output could not be parsed
    rationale: str | None = None
    probs: dict[str, float] | None = None  # P(rating = k) from the rating token's log-probs
    expected: float | None = None  # sum_k k * P(k): the soft score small judges need
    raw: str = ""  # the judge's text as generated, kept for audit
    order: list[str] | None = None  # joint rating: the completion ids in the order the judge saw them


ScoreSource = Literal["auto", "expected", "sampled"]
Status = Literal["parsed", "unparsed", "failed"]


class Judged(Record):
    """Who judged, and how: every verdict record says it, so two judges' records never mix."""

    judgement_id: str
    prompt_id: str
    judge: str  # the judge's name in the recipe
    kind: str
    judge_model: str
    template: str
    template_version: str
    template_hash: str
    settings_hash: str  # everything that shapes a verdict (see judges.spec.JudgeSpec.settings_hash)
    sampling: dict[str, Any]
    status: Status
    error: str | None = None
    retries: int = 0  # re-asks it took before the output parsed (or gave up)
    retryable: bool = False  # the judge's endpoint failed transiently: judged again on the next run
    judged_hash: str = ""  # content hash of the completion(s) judged: one made again is judged again
    # what its score is read from: the verdict token's probabilities, or the sampled verdict (a judge
    # without log-probs: a reasoning model, `logprobs: false`, a server that gives none)
    score_source: Literal["expected", "sampled"] | None = None
    # what answered, as it said: the served model (a hosted alias's dated snapshot), the provider's
    # system_fingerprint, or the local engine and its version (judges.identity reads it)
    served: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "parsed"


class Judgement(Judged):
    """A judge's verdict on one completion.

    `aspects` holds one `AspectRating` per rated aspect: the four UltraFeedback aspects, or a single
    `overall` (critique, MT-Bench single answer), or `reward` (a reward model's scalar, in `expected`).
    """

    completion_id: str
    model: str  # the generator that wrote the completion
    kind: str = "ultrafeedback"
    scale: tuple[float, float] | None = (1, 5)  # None: unbounded (a reward model)
    aspects: dict[str, AspectRating]

    def score(self, source: ScoreSource = "auto", aspect: str | None = None) -> float | None:
        """The mean over aspects (as Argilla's Notus did), or one `aspect`; None if any is unusable.

        expected: from the judge's rating-token probabilities; sampled: the written rating; auto:
        expected where the engine returned probabilities, else sampled. This is the common rule; a
        kind may read its verdicts another way (`JudgeKind.score`: a reward model's scalar is its
        score under every source), so stages score through the kind (judges.scores.score_of).
        """
        if self.status != "parsed":
            return None
        chosen = [self.aspects.get(aspect)] if aspect else list(self.aspects.values())
        values = []
        for a in chosen:
            if a is None:
                return None
            if source == "expected":
                values.append(a.expected)
            elif source == "sampled":
                values.append(a.rating)
            else:
                values.append(a.expected if a.expected is not None else a.rating)
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)


class PairVerdict(Record):
    """One order of a pairwise comparison: which of the two shown completions the judge preferred."""

    first: str  # completion id shown first (as "A")
    second: str
    winner: Literal["first", "second", "tie"] | None = None  # None: unparsed
    p_first: float | None = None  # P(first is better) from the verdict token's probabilities
    rationale: str | None = None
    raw: str = ""


class PairJudgement(Judged):
    """A pairwise judge's verdict on two completions of one prompt, judged in both orders.

    `winner` is "tie" when the two orders disagree, so position bias cancels (as in the RLAIF paper);
    `p_a` is P(a is better) averaged over both orders.
    """

    completion_a: str
    completion_b: str
    model_a: str
    model_b: str
    kind: str = "pairwise"
    orders: list[PairVerdict]  # [(a, b), (b, a)]
    winner: Literal["a", "b", "tie"] | None = None
    p_a: float | None = None
    order_changed_verdict: bool = False  # the two orders disagree


class PreferencePair(Record):
    """A binarized preference in TRL's conversational form with an explicit prompt."""

    prompt_id: str
    prompt: list[Message]
    chosen: list[Message] = Field(min_length=1, max_length=1)
    rejected: list[Message] = Field(min_length=1, max_length=1)
    score_chosen: float
    score_rejected: float
    chosen_model: str
    rejected_model: str
    chosen_completion_id: str
    rejected_completion_id: str
    judge: str
    pair_hash: str
    judge_model: str = ""  # provenance: who judged, with which template version
    judge_kind: str = ""
    template_version: str = ""

