"""Reading a judge's output: the verdict, its rationale, and the judge's probabilities for it.

A sampled rating throws away what the judge knows, and a small judge's samples collapse onto one
value. So besides parsing the text we read the log-probabilities the engine returned at the token
where the verdict was written, renormalize them over the allowed values, and keep the distribution
and its expected value (as G-Eval and the RLAIF paper do).

Each judge kind declares an `OutputFormat`: a pydantic model whose JSON schema drives structured
decoding (or, for MT-Bench's "[[rating]]" prompts, a regex), the field holding the verdict, its
allowed values, and a tolerant pattern for endpoints that ignore the constraint. Parsing never
invents a verdict: text it cannot read gives `value=None` and keeps the raw text.

Engines hand us log-probs as `TokenLogprobs` (rlaif.engines.base): for each generated token, its
text and the top candidates' (text, logprob) pairs, whichever engine ran the request.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from rlaif.engines.base import Constraint, TokenLogprobs


@dataclass(frozen=True)
class OutputFormat:
    """How a judge kind must answer, and how its answer is read back."""

    values: tuple[str, ...]  # the verdicts allowed, as written
    key: re.Pattern[str]  # matches the text right before the verdict token (for its probabilities)
    tolerant: re.Pattern[str]  # finds the verdict in free text (group 1)
    json_model: type[BaseModel] | None = None  # JSON output: its schema constrains decoding
    value_field: str = ""
    text_field: str = ""  # the rationale / critique field
    regex: str | None = None  # or a regex constraint (MT-Bench's "[[rating]]")

    def schema(self) -> dict | None:
        return self.json_model.model_json_schema() if self.json_model else None

    def constraint(self) -> Constraint:
        """What the engine enforces while decoding: the JSON schema, or the regex."""
        if self.json_model is not None:
            return Constraint(name=self.json_model.__name__, json_schema=self.schema())
        return Constraint(name="verdict", regex=self.regex)


def json_format(model: type[BaseModel], value_field: str, text_field: str, values: tuple[str, ...],
                 quoted: bool) -> OutputFormat:
    q = '"' if quoted else ""
    alts = "|".join(sorted(values, key=len, reverse=True))
    return OutputFormat(
        values=values, json_model=model, value_field=value_field, text_field=text_field,
        key=re.compile(rf'"{value_field}"\s*:\s*{q}$'),
        tolerant=re.compile(rf'{value_field}"?\s*[:=]\s*"?({alts})\b', re.IGNORECASE))


def bracket_format(values: tuple[str, ...], explanation_chars: int) -> OutputFormat:
    """MT-Bench's format: an explanation, then the verdict in double brackets, e.g. [[7]] or [[A]]."""
    alts = "|".join(sorted(values, key=len, reverse=True))
    return OutputFormat(values=values, key=re.compile(r"\[\[$"),
                        tolerant=re.compile(rf"\[\[\s*({alts})\s*\]\]"),
                        regex=rf"[^\[\]]{{0,{explanation_chars}}}\[\[({alts})\]\]")


# ---- reading it ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parsed:
    value: str | None  # None: unparsed
    text: str | None  # rationale / critique / explanation
    probs: dict[str, float] | None
    raw: str


def token_distribution(tokens: TokenLogprobs | None, key: re.Pattern[str],
                       values: tuple[str, ...]) -> dict[str, float] | None:
    """P(value) at the first token written right after `key` matches, renormalized over `values`.

    A value written in two tokens ("10" as "1" + "0") shares its first token with a shorter one:
    when the judge wrote that first token, the next position's probabilities split its mass; when
    it did not, the mass stays on the shorter value (the engine gave us no more to go on).
    """
    if not tokens:
        return None
    prefix = ""
    for i, (text, candidates) in enumerate(tokens):
        written = text.strip()
        if written and any(v.startswith(written) for v in values) and key.search(prefix):
            following = tokens[i + 1][1] if i + 1 < len(tokens) else []
            mass = dict.fromkeys(values, 0.0)
            for cand, logprob in candidates:
                c = cand.strip()
                if c not in mass or logprob == -math.inf:
                    continue
                p = math.exp(logprob)
                longer = [v for v in values if v != c and v.startswith(c)]
                if longer and c == written and following:
                    for v in longer:
                        q = sum(math.exp(lp) for t, lp in following if t.strip() == v[len(c):])
                        mass[v] += p * q
                        p -= p * q
                mass[c] += p
            total = sum(mass.values())
            return {v: m / total for v, m in mass.items()} if total > 0 else None
        prefix += text
    return None


def expected_value(probs: dict[str, float] | None) -> float | None:
    if not probs:
        return None
    return sum(float(k) * p for k, p in probs.items())


def parse_output(fmt: OutputFormat, text: str, tokens: TokenLogprobs | None = None) -> Parsed:
    """Parse one judge output; never invents a verdict."""
    value: str | None = None
    explanation: str | None = None
    if fmt.json_model is not None:
        try:
            data = fmt.json_model.model_validate(json.loads(text)).model_dump()
            value, explanation = str(data[fmt.value_field]), data[fmt.text_field]
        except (json.JSONDecodeError, ValidationError, TypeError):
            pass
    if value is None:  # no constraint honoured, or truncated JSON: read the free text
        m = fmt.tolerant.search(text)
        if m and m.group(1).upper() in {v.upper() for v in fmt.values}:
            value = next(v for v in fmt.values if v.upper() == m.group(1).upper())
            if fmt.text_field:
                r = re.search(rf'{fmt.text_field}"?\s*[:=]\s*"?([^"\n]*)', text, re.IGNORECASE)
                explanation = r.group(1).strip() if r else None
            else:
                explanation = text[: m.start()].strip() or None
    probs = token_distribution(tokens, fmt.key, fmt.values) if value is not None else None
    return Parsed(value=value, text=explanation, probs=probs, raw=text)
