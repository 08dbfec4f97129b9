"""The judge stage: every completion (or pair of completions) judged by one judge, chunk by chunk.

    plan_judging(completions, spec, store)               each chunk's judge shard and its state
    run_judge(prompts, completions, spec, store, ...)    judge what is not done; returns the Manifest
    compare_pairs(prompts, pairs, spec, store, ...)      PairJudgement records for given pairs
    stored_judgements(store, judge)                      a judge's records as its last run left them

A judge shard covers one prompt chunk: every member's completions of those prompts, so a pairwise
kind sees all of a prompt's completions at once. Its key is the judge's settings hash and the
content hashes of the chunk's completion shards: a regenerated shard is judged again, nothing else
is. The kind (judges/kinds/) says what to ask and how answers become records; this module sends
the asks to whatever engine the judge runs on (several chunks' asks at once to an engine that
wants big calls, such as the Batch API's), asks again (up to `spec.retries` times, at
`spec.retry_temperature` with a new seed) when an output does not parse, and stores an output that
never parses as unparsed with its raw text. Rows that failed transiently are judged again on the
next run; the rest are kept. Two judges sit side by side in `judgements/<name>/`, each with a
`report.json` of its counts and its manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace

from rlaif.core.errors import RlaifError
from rlaif.core.progress import NULL, Reporter, Task
from rlaif.core.records import Completion, Judged, Judgement, PairJudgement, Prompt, content_hash, derive_seed
from rlaif.core.store import Manifest, RunStore, ShardInfo
from rlaif.engines.base import Engine, EngineSettings, Request, window
from rlaif.engines.pool import EnginePool
from rlaif.generation.prompt_sets import PROMPTS
from rlaif.judges.base import Answer, Ask, pair_judgement, record_unit
from rlaif.judges.parsing import parse_output
from rlaif.judges.spec import JudgeSpec
from rlaif.prompts import PACKAGE

STAGE = "judgements"


def judge_dir(name: str) -> str:
    return f"{STAGE}/{name}"


def record_type(spec: JudgeSpec) -> type[Judged]:
    return PairJudgement if spec.pairwise else Judgement


# ----------------------------------------------------------------------------- asking
def ask(spec: JudgeSpec, engine: Engine, asks: list[Ask], seed: int, task: Task | None = None) -> dict[str, Answer]:
    """Send every ask; ask again those whose output did not parse, up to `spec.retries` times."""
    answers: dict[str, Answer] = {}
    pending = list(asks)
    for attempt in range(spec.retries + 1):
        if not pending:
            break
        sampling = spec.sampling if attempt == 0 else spec.sampling.model_copy(update={"temperature": spec.retry_temperature})
        requests = [Request(key=a.key, seed=derive_seed(seed, a.key, attempt), messages=a.messages,
                            sampling=sampling.model_copy(update={"max_tokens": a.max_tokens}) if a.max_tokens else sampling,
                            constraint=a.fmt.constraint() if spec.structured else None,
                            logprobs=spec.top_logprobs if spec.logprobs else 0, who=spec.name, row=a.row)
                    for a in pending]
        again = []
        for a, r in zip(pending, engine.generate(requests, task if attempt == 0 else None)):
            if not r.ok:  # the request failed: not a parse problem
                answers[a.key] = Answer(None, attempt, r.error or "no text returned", r.retryable)
                continue
            parsed = parse_output(a.fmt, r.text, r.tokens)
            answers[a.key] = Answer(parsed, attempt)
            if not parsed.complete:
                again.append(a)
        pending = again
    return answers


@dataclass
class ChunkJob:
    """One chunk's judging: its prompts and completions, the units to redo (None: all), its asks."""

    prompts: dict[str, Prompt]
    completions: list[Completion]
    only: set[str] | None = None
    asks: dict[str, list[Ask]] | None = None

    def plan(self, spec: JudgeSpec) -> list[Ask]:
        if self.asks is not None:
            return [a for group in self.asks.values() for a in group]
        by_prompt: dict[str, list[Completion]] = {}
        for c in self.completions:
            by_prompt.setdefault(c.prompt_id, []).append(c)
        kind, only = spec.impl, self.only
        self.asks = {pid: [replace(a, row=pid) for a in kind.asks(spec, self.prompts[pid], cs)
                           if only is None or only & set(a.units)]
                     for pid, cs in by_prompt.items()}
        return [a for group in self.asks.values() for a in group]

    def records(self, spec: JudgeSpec, answers: dict[str, Answer]) -> list[Judged]:
        kind, settings, out = spec.impl, spec.settings_hash(), []
        by_prompt: dict[str, list[Completion]] = {}
        for c in self.completions:
            by_prompt.setdefault(c.prompt_id, []).append(c)
        for pid, asks in self.asks.items():
            mine = {a.key: answers[a.key] for a in asks}
            out += [r for r in kind.records(spec, settings, self.prompts[pid], by_prompt[pid], mine)
                    if self.only is None or record_unit(r) in self.only]
        return out


def judge_jobs(spec: JudgeSpec, engine: Engine | None, jobs: list[ChunkJob], seed: int,
               task: Task | None = None) -> list[list[Judged]]:
    """Several chunks' records, their asks sent to the engine in one call."""
    kind = spec.impl
    if not kind.text:
        return [kind.judge_group(spec, j.prompts, j.completions, seed) for j in jobs]
    flat = [a for j in jobs for a in j.plan(spec)]
    if task is not None:
        task.grow(len(flat))
    answers = ask(spec, engine, flat, seed, task) if flat else {}
    return [j.records(spec, answers) for j in jobs]


def judge_records(spec: JudgeSpec, engine: Engine | None, prompts: dict[str, Prompt], completions: list[Completion],
                  seed: int, task: Task | None = None, only: set[str] | None = None) -> list[Judged]:
    """One chunk's records; with `only`, just the records of those units (completions or pairs)."""
    return judge_jobs(spec, engine, [ChunkJob(prompts, completions, only)], seed, task)[0]


# ----------------------------------------------------------------------------- the stage
@dataclass
class Unit:
    group: str  # the prompt chunk
    key: str
    info: ShardInfo | None

    @property
    def todo(self) -> bool:
        return self.info is None or self.info.retryable > 0


def plan_judging(completions: Manifest, spec: JudgeSpec, store: RunStore, stage: str | None = None) -> list[Unit]:
    stage, settings, kind = stage or judge_dir(spec.name), spec.settings_hash(), record_type(spec)
    units = []
    for group, shards in completions.by_group().items():
        key = shard_key(settings, shards)
        units.append(Unit(group, key, store.info(stage, key, kind)))
    return units


def shard_key(settings: str, shards: list[ShardInfo]) -> str:
    """A judge's shard for one prompt chunk: its settings and the chunk's completion shards, in order."""
    return content_hash(settings, [s.sha for s in shards])


def judge_chunk(spec: JudgeSpec, engine: Engine | None, prompts: dict[str, Prompt], completions: list[Completion],
                old: list[Judged] | None, seed: int, task: Task | None = None) -> list[Judged]:
    """One prompt chunk's judge shard. `old` is the shard from an earlier run, or None: then only
    its rows that failed transiently are judged again, and the rest are kept as they were."""
    only = {record_unit(r) for r in old if r.retryable} if old is not None else None
    records = judge_records(spec, engine, prompts, completions, seed, task, only)
    if old is not None:
        redone = {record_unit(r): r for r in records}
        records = [redone.get(record_unit(r), r) for r in old]
    return records


def run_judge(prompts: Manifest, completions: Manifest, spec: JudgeSpec, store: RunStore,
              engines: EnginePool | None = None, default_engine: EngineSettings | None = None, seed: int = 0,
              report: Reporter = NULL, stage: str | None = None) -> Manifest:
    """Judge every chunk of completions not judged yet with these settings; returns the manifest."""
    stage = stage or judge_dir(spec.name)
    units = plan_judging(completions, spec, store, stage)
    todo = [u for u in units if u.todo]
    report.note(f"judge {spec.name}: {len(units) - len(todo)} of {len(units)} shards already done")
    for line in store.damaged_notes(stage, [u.key for u in todo]):
        report.note(line)
    t = spec.judge_template()
    if t.source != PACKAGE:  # the recipe's own templates_dir: say which folder the run used
        report.note(f"judge {spec.name}: template {t.name}.{t.version} from {t.source} (the recipe's templates_dir)")
    if todo:
        own = engines is None
        engines = engines or EnginePool(seed=seed)
        try:
            engine_spec = spec.engine_spec(default_engine)
            engine = engines.get(engine_spec, store.root) if engine_spec is not None else None
            task = report.task(spec.name, 0)
            wanted, pending, asks = window(engine), [], 0  # chunks whose asks go to the engine together

            def flush() -> None:
                if not pending:
                    return
                for (u, old, _), records in zip(pending, judge_jobs(spec, engine, [j for *_, j in pending], seed, task)):
                    if old is not None:  # only the rows that failed transiently were judged again
                        redone = {record_unit(r): r for r in records}
                        records = [redone.get(record_unit(r), r) for r in old]
                    u.info = store.write(stage, u.key, records, group=u.group, name=spec.name)
                pending.clear()

            for u in todo:
                by_id = {p.prompt_id: p for p in store.iter(PROMPTS, u.group, Prompt)}
                comps = list(store.read_manifest(completions, Completion, u.group))
                old = store.read(stage, u.key, record_type(spec)) if u.info is not None else None
                only = {record_unit(r) for r in old if r.retryable} if old is not None else None
                job = ChunkJob(by_id, comps, only)
                pending.append((u, old, job))
                asks += len(job.plan(spec)) if spec.impl.text else len(comps)
                if asks >= wanted:
                    flush()
                    asks = 0
            flush()
        finally:
            if own:
                engines.close()
    manifest = Manifest(stage=stage, shards=[u.info for u in units if u.info is not None])
    store.write_json(f"{stage}/report.json", {"judge": spec.name, "kind": spec.kind, "settings_hash": spec.settings_hash(),
                                              "spec": spec.model_dump(mode="json", exclude={"endpoint"}),
                                              **manifest_counts(manifest), "manifest": manifest.model_dump()})
    return manifest


def manifest_counts(m: Manifest) -> dict[str, int]:
    """parsed / unparsed / failed, and `retried`: how many needed at least one re-ask."""
    c = m.counts()
    return {"total": m.total("rows"), "parsed": c.get("parsed", 0), "retried": c.get("retried", 0),
            "unparsed": c.get("unparsed", 0), "failed": c.get("failed", 0)}


def judge_counts(records: list[Judged]) -> dict[str, int]:
    """The same counts for records in memory."""
    status = Counter(r.status for r in records)
    return {"total": len(records), "parsed": status["parsed"], "retried": sum(r.retries > 0 for r in records),
            "unparsed": status["unparsed"], "failed": status["failed"]}


def stored_manifest(store: RunStore, judge: str) -> tuple[dict, Manifest]:
    """A judge's report and manifest as its last run left them."""
    report = store.root / judge_dir(judge) / "report.json"
    if not report.exists():
        folder = store.root / STAGE
        have = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        raise RlaifError(f"{store.root}: no judgements by {judge!r} (judges in this run: {have})")
    info = json.loads(report.read_text())
    return info, Manifest.model_validate(info["manifest"])


def stored_judgements(store: RunStore, judge: str) -> list[Judged]:
    info, manifest = stored_manifest(store, judge)
    kind = PairJudgement if info["kind"] in ("pairwise", "mt_bench_pairwise") else Judgement
    return list(store.read_manifest(manifest, kind))


# ----------------------------------------------------------------------------- given pairs (evaluation)
def compare_pairs(prompts: list[Prompt], pairs: list[tuple[Completion, Completion]], spec: JudgeSpec,
                  store: RunStore, engines: EnginePool | None = None, default_engine: EngineSettings | None = None,
                  seed: int = 0, report: Reporter = NULL) -> list[PairJudgement]:
    """Given pairs (a, b) of completions of one prompt each, which is better, by any judge kind.

    A pairwise judge judges them in both orders; a pointwise judge scores each completion and the
    higher score wins (p_a: 1, 0.5 or 0). Stored under `comparisons/<judge name>/`.
    """
    stage, settings = f"comparisons/{spec.name}", spec.settings_hash()
    by_id = {p.prompt_id: p for p in prompts}
    unique = list({c.completion_id: c for pair in pairs for c in pair}.values())
    key = content_hash(settings, [(a.completion_id, a.text, b.completion_id, b.text) for a, b in pairs])
    kind = record_type(spec) if spec.pairwise else Judgement
    info = store.info(stage, key, kind)
    if info is None or info.retryable:
        own = engines is None
        engines = engines or EnginePool(seed=seed)
        try:
            engine_spec = spec.engine_spec(default_engine)
            engine = engines.get(engine_spec, store.root) if engine_spec is not None else None
            task = report.task(f"compare with {spec.name}", 0)
            if spec.pairwise:
                asks = [a for x, y in pairs for a in spec.impl.pair_asks(spec, by_id[x.prompt_id], x, y)]
                task.grow(len(asks))
                answers = ask(spec, engine, asks, seed, task)
                records = [pair_judgement(spec, settings, x, y, {o: answers[f"{content_hash(x.completion_id, y.completion_id)}|{o}"]
                                                                 for o in ("ab", "ba")}) for x, y in pairs]
            else:
                records = judge_records(spec, engine, by_id, unique, seed, task)
            store.write(stage, key, records)
        finally:
            if own:
                engines.close()
    records = store.read(stage, key, kind)
    if spec.pairwise:
        return records  # type: ignore[return-value]
    scores = {j.completion_id: j for j in records}
    out = []
    for a, b in pairs:
        ja, jb = scores[a.completion_id], scores[b.completion_id]
        sa, sb = ja.score(), jb.score()
        base = dict(judgement_id=content_hash(a.completion_id, b.completion_id, settings), prompt_id=a.prompt_id,
                    completion_a=a.completion_id, completion_b=b.completion_id, model_a=a.model, model_b=b.model,
                    judge=spec.name, kind=spec.kind, judge_model=spec.model, template=ja.template,
                    template_version=ja.template_version, template_hash=ja.template_hash, settings_hash=settings,
                    sampling=ja.sampling, orders=[], retries=max(ja.retries, jb.retries))
        if sa is None or sb is None:
            status = "failed" if "failed" in (ja.status, jb.status) else "unparsed"
            out.append(PairJudgement(**base, status=status, error=ja.error or jb.error))
        else:
            winner = "a" if sa > sb else "b" if sb > sa else "tie"
            out.append(PairJudgement(**base, status="parsed", winner=winner, p_a={"a": 1.0, "b": 0.0, "tie": 0.5}[winner]))
    return out
