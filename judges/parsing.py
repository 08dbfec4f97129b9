"""Reading a judge's output: the rating, its rationale, and the judge's probabilities for it.

A sampled rating throws away what the judge knows, and a small judge's samples collapse onto one
value. So besides parsing the text we read the log-probabilities the engine returned at the token
where the rating was written, renormalize them over the allowed ratings, and keep the distribution
and its expected value (as G-Eval and the RLAIF paper do).

Engines hand us log-probs as `TokenLogprobs`: for each generated token, its text and the top
candidates' (text, logprob) pairs. vLLM's offline engine and OpenAI-compatible servers both fit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from generation.records import AspectRating

TokenLogprobs = list[tuple[str, list[tuple[str, float]]]]
RATINGS = (1, 2, 3, 4, 5)


class RatingOutput(BaseModel):
    """What the judge must write; its JSON schema drives structured decoding."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal[1, 2, 3, 4, 5]
    rationale: str = Field(max_length=200)  # bounded: JSON cut off by max_tokens does not parse


_KEY_BEFORE_VALUE = re.compile(r'"rating"\s*:\s*$')
_TOLERANT = re.compile(r'rating"?\s*[:=]\s*"?([1-5])\b', re.IGNORECASE)


def rating_distribution(tokens: TokenLogprobs | None, key: re.Pattern[str] = _KEY_BEFORE_VALUE,
                        values: tuple[int, ...] = RATINGS) -> dict[str, float] | None:
    """P(rating = k) at the first token written right after `"rating":`, or None if not found."""
    if not tokens:
        return None
    prefix = ""
    allowed = {str(v) for v in values}
    for text, candidates in tokens:
        if text.strip() in allowed and key.search(prefix):
            mass: dict[str, float] = {}
            for cand, logprob in candidates:
                c = cand.strip()
                if c in allowed and logprob > -math.inf:
                    mass[c] = mass.get(c, 0.0) + math.exp(logprob)
            total = sum(mass.values())
            if total <= 0:
                return None
            return {str(v): mass.get(str(v), 0.0) / total for v in values}
        prefix += text
    return None


def expected_value(probs: dict[str, float] | None) -> float | None:
    if not probs:
        return None
    return sum(int(k) * p for k, p in probs.items())


def parse_rating(text: str, tokens: TokenLogprobs | None = None) -> AspectRating:
    """Parse one aspect's output. Never invents a score: unparseable text keeps rating=None."""
    rating: int | None = None
    rationale: str | None = None
    try:
        parsed = RatingOutput.model_validate(json.loads(text))
        rating, rationale = parsed.rating, parsed.rationale
    except (json.JSONDecodeError, ValidationError, TypeError):
        m = _TOLERANT.search(text)  # endpoints without structured output, or truncated JSON
        if m:
            rating = int(m.group(1))
            r = re.search(r'rationale"?\s*[:=]\s*"?([^"\n]*)', text, re.IGNORECASE)
            rationale = r.group(1).strip() if r else None
    probs = rating_distribution(tokens) if rating is not None else None
    return AspectRating(rating=rating, rationale=rationale, probs=probs,
                        expected=expected_value(probs), raw=text)


def vllm_token_logprobs(output) -> TokenLogprobs | None:
    """Convert one vLLM CompletionOutput's log-probs into `TokenLogprobs`."""
    if not output.logprobs:
        return None
    result: TokenLogprobs = []
    for tid, position in zip(output.token_ids, output.logprobs):
        chosen = position.get(tid)
        text = chosen.decoded_token if chosen is not None and chosen.decoded_token is not None else ""
        result.append((text, [(lp.decoded_token or "", lp.logprob) for lp in position.values()]))
    return result
