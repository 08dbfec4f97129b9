"""Reading a judge's output: the verdict, its rationale, and the judge's probabilities for it.

A sampled rating throws away what the judge knows, and a small judge's samples collapse onto one
value. So besides parsing the text we read the log-probabilities the engine returned at the token
where the verdict was written, renormalize them over the allowed values, and keep the distribution
and its expected value (as G-Eval and the RLAIF paper do).

Each judge kind declares an `OutputFormat`: a pydantic model whose JSON schema drives structured
decoding, the field holding the verdict, its allowed values, and a tolerant pattern for endpoints
that ignore the constraint. MT-Bench's "[[rating]]" prompts have a regex for engines that take one
and the same verdict as JSON for those that do not (a hosted API's strict schemas); in free text an
MT-Bench rating is read as FastChat reads it (`rating_format`). A joint format
(`joint_format`) asks for several completions' verdicts in one JSON object, `text_1`, `text_2`, ...
as UltraFeedback's prompts did. Parsing never invents a verdict: text it cannot read gives
`value=None` and keeps the raw text.

Engines hand us log-probs as `TokenLogprobs` (rlaif.engines.base): for each generated token, its
text and the top candidates' (text, logprob) pairs, whichever engine ran the request.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

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
    regex: str | None = None  # a regex constraint (MT-Bench's "[[rating]]"), preferred where taken
    quoted: bool = False  # the JSON verdict is a string
    items: int = 0  # a joint format: the verdicts of `items` texts, as {"text_1": {...}, ...}
    item_model: type[BaseModel] | None = None  # a joint format: one text's verdict
    fallback: re.Pattern[str] | None = None  # free text without a `tolerant` match: this one (group 1)
    number: tuple[float, float] | None = None  # the verdict is any number in this range, not only `values`

    def schema(self) -> dict | None:
        return self.json_model.model_json_schema() if self.json_model else None

    def constraint(self) -> Constraint:
        """What the engine enforces while decoding: the regex where the engine takes one, else the
        JSON schema."""
        name = self.json_model.__name__ if self.json_model is not None else "verdict"
        return Constraint(name=name, json_schema=self.schema(), regex=self.regex)

    def json_key(self, item: str | None = None) -> re.Pattern[str]:
        """The text right before the JSON verdict (of one item of a joint format)."""
        q = '"' if self.quoted else ""
        inside = rf'"{item}"\s*:\s*\{{\s*' if item else ""
        return re.compile(rf'{inside}"{self.value_field}"\s*:\s*{q}$')


def _tolerant(value_field: str, values: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(sorted(values, key=len, reverse=True))
    return re.compile(rf'{value_field}"?\s*[:=]\s*"?({alts})\b', re.IGNORECASE)


def json_format(model: type[BaseModel], value_field: str, text_field: str, values: tuple[str, ...],
                quoted: bool) -> OutputFormat:
    q = '"' if quoted else ""
    return OutputFormat(
        values=values, json_model=model, value_field=value_field, text_field=text_field, quoted=quoted,
        key=re.compile(rf'"{value_field}"\s*:\s*{q}$'), tolerant=_tolerant(value_field, values))


@lru_cache(maxsize=32)
def bracket_format(values: tuple[str, ...], explanation_chars: int) -> OutputFormat:
    """MT-Bench's format: an explanation, then the verdict in double brackets, e.g. [[7]] or [[A]];
    as JSON ({"explanation", "verdict"}) where no regex can be enforced."""
    alts = "|".join(sorted(values, key=len, reverse=True))
    model = create_model(
        "MTBenchVerdict", __config__=ConfigDict(extra="forbid"),
        explanation=(str, Field(max_length=explanation_chars, description="your explanation, as the prompt asks")),
        verdict=(Literal[values], Field(description="the verdict you would write in [[ ]]")))
    return OutputFormat(values=values, key=re.compile(r"\[\[$"), tolerant=re.compile(rf"\[\[\s*({alts})\s*\]\]"),
                        regex=rf"[^\[\]]{{0,{explanation_chars}}}\[\[({alts})\]\]", json_model=model,
                        value_field="verdict", text_field="explanation", quoted=True)


# FastChat's llm_judge/common.py (run_judge_single): the first [[x]] in the judgment, else the first [x]
FASTCHAT_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
FASTCHAT_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@lru_cache(maxsize=32)
def rating_format(low: int, high: int, explanation_chars: int) -> OutputFormat:
    """MT-Bench's single-answer format: the whole ratings low..high in [[ ]] for the regex and the JSON
    (constrained decoding stays on integers), and free text read as FastChat reads a rating, so that
    every verdict its show_result.py counts is counted here: the first `[[x]]`, else the first `[x]`
    ("Rating: [7]"), x any number ("[[7.5]]"). One departure: a number outside low..high is unparsed
    (FastChat keeps it): the records carry the scale, and the judge card's histogram bins on it."""
    fmt = bracket_format(tuple(str(i) for i in range(low, high + 1)), explanation_chars)
    return dataclasses.replace(fmt, tolerant=FASTCHAT_RATING, fallback=FASTCHAT_RATING_BACKUP,
                               number=(float(low), float(high)))


@lru_cache(maxsize=64)
def joint_format(item: OutputFormat, n: int) -> OutputFormat:
    """`n` texts' verdicts in one answer: {"text_1": <item>, ..., "text_n": <item>}, every one required."""
    fields = {f"text_{i}": (item.json_model, ...) for i in range(1, n + 1)}
    model = create_model(f"{item.json_model.__name__}Joint{n}", __config__=ConfigDict(extra="forbid"), **fields)
    return OutputFormat(values=item.values, key=item.key, tolerant=item.tolerant, json_model=model,
                        value_field=item.value_field, text_field=item.text_field, quoted=item.quoted, items=n,
                        item_model=item.json_model)


# ---- reading it ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parsed:
    value: str | None  # None: unparsed
    text: str | None  # rationale / critique / explanation
    probs: dict[str, float] | None
    raw: str
    items: dict[str, Parsed] | None = None  # a joint answer: each text's verdict ("text_1", ...)

    @property
    def complete(self) -> bool:
        """Every verdict asked for was read (a joint answer: every text's)."""
        if self.items is not None:
            return bool(self.items) and all(p.value is not None for p in self.items.values())
        return self.value is not None


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
    if fmt.items:
        return _parse_joint(fmt, text, tokens)
    value: str | None = None
    explanation: str | None = None
    key = fmt.key
    if fmt.json_model is not None:
        try:
            data = fmt.json_model.model_validate(json.loads(text)).model_dump()
            value, explanation, key = str(data[fmt.value_field]), data[fmt.text_field], fmt.json_key()
        except (json.JSONDecodeError, ValidationError, TypeError):
            pass
    if value is None:  # no constraint honoured, or truncated JSON: read the free text
        value, explanation = _tolerant_read(fmt, text)
    # a rating between the values (7.5) is not one the token probabilities are over
    usable = value is not None and (fmt.number is None or value in fmt.values)
    probs = token_distribution(tokens, key, fmt.values) if usable else None
    return Parsed(value=value, text=explanation, probs=probs, raw=text)


def _tolerant_read(fmt: OutputFormat, text: str) -> tuple[str | None, str | None]:
    m = fmt.tolerant.search(text)
    if m is None and fmt.fallback is not None and not text.lstrip().startswith("{"):  # not in (cut) JSON
        m = fmt.fallback.search(text)
    value = _allowed(fmt, m.group(1)) if m else None
    if value is None:
        return None, None
    if fmt.regex is None and fmt.text_field:
        r = re.search(rf'{fmt.text_field}"?\s*[:=]\s*"?([^"\n]*)', text, re.IGNORECASE)
        return value, r.group(1).strip() if r else None
    return value, text[: m.start()].strip() or None


def _allowed(fmt: OutputFormat, written: str) -> str | None:
    """The verdict as the format spells it, or None if it is not one the format allows."""
    if fmt.number is not None:
        x = float(written)
        return format(x, "g") if fmt.number[0] <= x <= fmt.number[1] else None
    return next((v for v in fmt.values if v.upper() == written.upper()), None)


def _parse_joint(fmt: OutputFormat, text: str, tokens: TokenLogprobs | None) -> Parsed:
    """Each text's verdict of a joint answer: from its JSON, else from its section of free or
    truncated text ("text_2" / "Text 2" up to the next text's marker)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    marks = [re.search(rf"text[ _]?{i}\b", text, re.IGNORECASE) for i in range(1, fmt.items + 2)]
    items = {}
    for i in range(1, fmt.items + 1):
        name = f"text_{i}"
        value = explanation = None
        sub = data.get(name) if isinstance(data, dict) else None
        try:
            d = fmt.item_model.model_validate(sub).model_dump()
            value, explanation, raw = str(d[fmt.value_field]), d[fmt.text_field], json.dumps(sub, ensure_ascii=False)
        except (ValidationError, TypeError):
            start, end = marks[i - 1], marks[i]
            raw = text[start.start(): end.start() if end else len(text)] if start else ""
            if raw:
                value, explanation = _tolerant_read(fmt, raw)
        probs = token_distribution(tokens, fmt.json_key(name), fmt.values) if value is not None else None
        items[name] = Parsed(value=value, text=explanation, probs=probs, raw=raw)
    return Parsed(value=None, text=None, probs=None, raw=text, items=items)
