"""Sentinels: a fixed handful of a run's prompts and completions that every run of a judge judges again.

A judge's verdicts are only comparable from one run to the next if the judge stays the same, and
a hosted model name does not promise that (the snapshot behind it changes; see judges/identity.py).
A judge block's `sentinels: N` keeps N prompts with their completions, drawn once from the run and
kept in `<run>/sentinels/set.json`; each run that judges something new judges them again (a
*check*) and compares the verdicts with the first check of that judge's settings:

    score shift    the mean change of a completion's score
    spearman       rank correlation of the scores
    kappa          Cohen's kappa on the preference between every two completions of a prompt
    flips          the share of those preferences that changed (a, b or tie): what `max_drift` bounds

    sentinels/set.json                     the prompts and their completions (grows if a judge wants more)
    sentinels/<judge>/history.json         every check: when, what answered, its drift from the first
    sentinels/<judge>/<check key>.jsonl    the check's verdicts

A check is keyed by the judge's settings, the judgements it vouches for (their manifest's hash)
and the set: a resumed or unchanged run finds its check and judges nothing, a run with new
verdicts makes one. The cost is N prompts' asks per run that judges: `rlaif run --dry-run` shows
it and `bench/judging.py --sentinels` measures it against a 61k-prompt run.
"""

from __future__ import annotations

import heapq
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rlaif.core.errors import RlaifError
from rlaif.core.records import Completion, Judged, Prompt, ScoreSource, content_hash
from rlaif.core.store import Manifest, RunStore, write_json
from rlaif.engines.base import Engine
from rlaif.judges.agreement import agreement
from rlaif.judges.identity import judged_by
from rlaif.judges.spec import JudgeSpec
from rlaif.judges.stage import ChunkJob, judge_jobs, record_type
from rlaif.prompts.prompt_sets import PROMPTS

FOLDER = "sentinels"


class SentinelSet(BaseModel):
    """The prompts every check judges, in the order they were drawn, with their completions."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    prompts: list[Prompt]
    completions: list[Completion]

    def hash(self) -> str:
        return content_hash([p.prompt_id for p in self.prompts], [c.completion_id for c in self.completions])

    def take(self, n: int) -> SentinelSet:
        """The first `n` prompts drawn, with their completions: a judge that asks for fewer than the set holds."""
        keep = {p.prompt_id for p in self.prompts[:n]}
        return SentinelSet(seed=self.seed, prompts=self.prompts[:n],
                           completions=[c for c in self.completions if c.prompt_id in keep])


def set_path(run: str | Path) -> Path:
    return Path(run) / FOLDER / "set.json"


def read_set(run: str | Path) -> SentinelSet | None:
    path = set_path(run)
    return SentinelSet.model_validate_json(path.read_text()) if path.exists() else None


def order(seed: int, prompt_id: str) -> str:
    """Where a prompt comes in the draw: a hash, so the draw is the same on every machine and a
    grown prompt set keeps the prompts drawn before."""
    return content_hash(seed, "sentinel", prompt_id)


def draw(store: RunStore, prompts: Manifest, completions: Manifest, n: int, seed: int) -> SentinelSet:
    """The run's sentinel set, at least `n` prompts with two or more usable completions each: read
    from `sentinels/set.json`, or drawn now (and kept) where it holds fewer; those drawn before stay."""
    have = read_set(store.root)
    if have is not None and len(have.prompts) >= n:
        return have.take(n)
    taken = {p.prompt_id for p in have.prompts} if have else set()
    ranked: list[tuple[str, str]] = []  # the 4n first in the draw: enough with prompts of one usable answer left out
    for shard in prompts.shards:
        for p in store.iter(PROMPTS, shard.key, Prompt):
            if p.prompt_id not in taken:
                ranked.append((order(seed, p.prompt_id), p.prompt_id))
        ranked = heapq.nsmallest(4 * n, ranked)
    wanted = {pid for _, pid in ranked}
    found: dict[str, Prompt] = {}
    answers: dict[str, list[Completion]] = {}
    for shard in prompts.shards:
        found.update((p.prompt_id, p) for p in store.iter(PROMPTS, shard.key, Prompt) if p.prompt_id in wanted)
    for c in store.read_manifest(completions, Completion):
        if c.prompt_id in wanted and c.ok:
            answers.setdefault(c.prompt_id, []).append(c)
    new = [pid for _, pid in sorted(ranked) if len(answers.get(pid, [])) >= 2][:n - len(taken)]
    if have is None and not new:
        raise RlaifError(f"{store.root}: no prompt has two usable completions to keep as a sentinel")
    drawn = SentinelSet(seed=seed, prompts=[*(have.prompts if have else []), *(found[p] for p in new)],
                        completions=[*(have.completions if have else []), *(c for p in new for c in answers[p])])
    write_json(set_path(store.root), drawn.model_dump(mode="json"))
    return drawn.take(n)


# ----------------------------------------------------------------------------- checks
class Drift(BaseModel):
    """One check's verdicts against another's (the first of the judge's settings)."""

    against: int  # the check compared with
    completions: int
    pairs: int
    flipped: int
    flip_rate: float | None
    score_shift: float | None
    spearman: float | None
    kappa: float | None


class Check(BaseModel):
    """One run's judging of the sentinels."""

    number: int
    key: str
    created: str
    judge: str
    model: str
    settings_hash: str
    served: dict[str, int]  # verdicts per identity that answered
    prompts: int
    completions: int
    requests: int
    parsed: int
    version: int | None = None  # the dataset version it vouched for, once published
    drift: Drift | None = None  # against the first check of these settings; None for that first


def history_path(run: str | Path, judge: str) -> Path:
    return Path(run) / FOLDER / judge / "history.json"


def history(run: str | Path, judge: str) -> list[Check]:
    path = history_path(run, judge)
    return [Check.model_validate(c) for c in json.loads(path.read_text())] if path.exists() else []


def check_key(spec: JudgeSpec, judgements: Manifest, sentinels: SentinelSet) -> str:
    return content_hash(spec.settings_hash(), judgements.hash, sentinels.hash())


def find(run: str | Path, judge: str, key: str) -> Check | None:
    return next((c for c in history(run, judge) if c.key == key), None)


def check_records(store: RunStore, check: Check, kind: type[Judged]) -> list[Judged]:
    return store.read(f"{FOLDER}/{check.judge}", check.key, kind)


def baseline(run: str | Path, spec: JudgeSpec) -> Check | None:
    """The first check of the judge's current settings: what later checks are compared with."""
    return next((c for c in history(run, spec.name) if c.settings_hash == spec.settings_hash()), None)


def drift(first: list[Judged], now: list[Judged], against: int, source: ScoreSource = "auto") -> Drift:
    a = agreement(first, now, ("first", "now"), source)  # type: ignore[arg-type]
    return Drift(against=against, completions=a.completions_scored_by_both, pairs=a.preference_pairs,
                 flipped=a.flipped_pairs, flip_rate=a.flip_rate, score_shift=a.score_shift, spearman=a.spearman,
                 kappa=a.cohen_kappa)


def run_check(store: RunStore, spec: JudgeSpec, engine: Engine | None, sentinels: SentinelSet, key: str,
              seed: int = 0, source: ScoreSource = "auto") -> Check:
    """Judge the sentinels now, keep the verdicts and the check (with its drift from the first)."""
    chunk = ChunkJob({p.prompt_id: p for p in sentinels.prompts}, sentinels.completions)
    requests = len(chunk.plan(spec)) if spec.impl.text else len(sentinels.completions)
    records = judge_jobs(spec, engine, [chunk], seed)[0]
    stage = f"{FOLDER}/{spec.name}"
    store.write(stage, key, records)
    first, past = baseline(store.root, spec), history(store.root, spec.name)
    check = Check(number=len(past) + 1, key=key, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  judge=spec.name, model=spec.model, settings_hash=spec.settings_hash(), served=judged_by(records),
                  prompts=len(sentinels.prompts), completions=len(sentinels.completions), requests=requests,
                  parsed=sum(r.status == "parsed" for r in records))
    if first is not None:
        check.drift = drift(check_records(store, first, record_type(spec)), records, first.number, source)
    write_json(history_path(store.root, spec.name), [c.model_dump(mode="json") for c in [*past, check]])
    return check


def mark_published(run: str | Path, judge: str, key: str, version: int) -> None:
    """Say which dataset version a check vouched for (the card's drift plot is over versions)."""
    past = history(run, judge)
    for c in past:
        if c.key == key:
            c.version = version
    write_json(history_path(run, judge), [c.model_dump(mode="json") for c in past])


def too_far(check: Check, spec: JudgeSpec) -> bool:
    d = check.drift
    return d is not None and d.flip_rate is not None and d.flip_rate > spec.max_drift


def describe(check: Check, first: Check | None) -> str:
    """One line: what flipped and shifted since the first check, and what answered then and now."""
    d = check.drift
    if d is None:
        return f"sentinel check {check.number}: the first of judge {check.judge}'s settings ({check.prompts} prompts)"
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"  # noqa: E731
    num = lambda x: "n/a" if x is None else f"{x:+.2f}"  # noqa: E731
    line = (f"{d.flipped} of {d.pairs} sentinel preferences flipped ({pct(d.flip_rate)}) since check {d.against}, "
            f"score shift {num(d.score_shift)}")
    if first is not None and set(first.served) != set(check.served):
        line += f"; served as {', '.join(check.served)} (first: {', '.join(first.served)})"
    return line
