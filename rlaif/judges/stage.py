"""The judge stage: every completion (or pair of completions) judged by one judge, chunk by chunk.

    JudgeStage(completions, spec, ...)                   the stage: each chunk's judge shard (runners/jobs.py)
    run_judge(prompts, completions, spec, store, ...)    judge what is not done, here; returns the Manifest
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
from dataclasses import dataclass, replace

from rlaif.core.errors import RlaifError
from rlaif.core.progress import Task
from rlaif.core.records import Completion, Judged, Judgement, PairJudgement, Prompt, content_hash, derive_seed
from rlaif.core.store import Manifest, RunStore, ShardInfo
from rlaif.engines.base import Engine, EngineSettings, Request
from rlaif.engines.pool import EnginePool
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.prompts.prompt_sets import PROMPTS
from rlaif.judges.base import Answer, Ask, pair_judgement, record_unit
from rlaif.judges.identity import changed, judged_by
from rlaif.judges.parsing import parse_output
from rlaif.judges.registry import get_kind
from rlaif.judges.spec import JudgeSpec
from rlaif.prompts import PACKAGE
from rlaif.runners.context import RunContext
from rlaif.runners.jobs import Job, Shard

STAGE = "judgements"


def judge_dir(name: str) -> str:
    return f"{STAGE}/{name}"


def record_type(spec: JudgeSpec) -> type[Judged]:
    return spec.impl.record_type


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
                answers[a.key] = Answer(None, attempt, r.error or "no text returned", r.retryable, r.served or None)
                continue
            parsed = parse_output(a.fmt, r.text, r.tokens)
            answers[a.key] = Answer(parsed, attempt, served=r.served or None)
            if not parsed.complete:
                again.append(a)
        pending = again
    return answers


def judged_hash(r: Judged, by_id: dict[str, Completion]) -> str:
    """The content of what a record judged: its completion, or its pair's two."""
    if isinstance(r, PairJudgement):
        return content_hash(by_id[r.completion_a], by_id[r.completion_b])
    return content_hash(by_id[r.completion_id])  # type: ignore[attr-defined]


@dataclass
class ChunkJob:
    """One chunk's judging: its prompts and completions, the units to leave out (`skip`: judged
    already, by an earlier run, of the same completions), and its asks."""

    prompts: dict[str, Prompt]
    completions: list[Completion]
    skip: frozenset[str] = frozenset()
    asks: dict[str, list[Ask]] | None = None

    def plan(self, spec: JudgeSpec) -> list[Ask]:
        if self.asks is not None:
            return [a for group in self.asks.values() for a in group]
        by_prompt: dict[str, list[Completion]] = {}
        for c in self.completions:
            by_prompt.setdefault(c.prompt_id, []).append(c)
        kind, skip = spec.impl, self.skip
        self.asks = {pid: [replace(a, row=pid) for a in kind.asks(spec, self.prompts[pid], cs) if set(a.units) - skip]
                     for pid, cs in by_prompt.items()}
        return [a for group in self.asks.values() for a in group]

    def records(self, spec: JudgeSpec, answers: dict[str, Answer]) -> list[Judged]:
        kind, settings, out = spec.impl, spec.settings_hash(), []
        by_prompt: dict[str, list[Completion]] = {}
        for c in self.completions:
            by_prompt.setdefault(c.prompt_id, []).append(c)
        served: dict[str, dict[str, str] | None] = {}
        for pid, asks in self.asks.items():
            prompt_answers = {a.key: answers[a.key] for a in asks}
            out += [r for r in kind.records(spec, settings, self.prompts[pid], by_prompt[pid], prompt_answers)
                    if record_unit(r) not in self.skip]
            for a in asks:  # the last answer that came back for a unit says what served it
                for u in a.units:
                    served[u] = answers[a.key].served or served.get(u)
        return self.stamped(out, served)

    def stamped(self, records: list[Judged], served: dict[str, dict[str, str] | None] | None = None) -> list[Judged]:
        """The records with what they judged (`judged_hash`) and what answered (`served`)."""
        by_id, served = {c.completion_id: c for c in self.completions}, served or {}
        return [r.model_copy(update={"judged_hash": judged_hash(r, by_id), "served": served.get(record_unit(r), r.served)})
                for r in records]


def judge_jobs(spec: JudgeSpec, engine: Engine | None, jobs: list[ChunkJob], seed: int,
               task: Task | None = None) -> list[list[Judged]]:
    """Several chunks' records, their asks sent to the engine in one call."""
    kind = spec.impl
    if not kind.text:
        import transformers

        engine_id = {"engine": f"transformers {transformers.__version__}", "model": spec.model}
        return [j.stamped([r.model_copy(update={"served": engine_id}) for r in kind.judge_group(
            spec, j.prompts, [c for c in j.completions if c.completion_id not in j.skip], seed)]) for j in jobs]
    flat = [a for j in jobs for a in j.plan(spec)]
    answers = ask(spec, engine, flat, seed, task) if flat else {}
    return [j.records(spec, answers) for j in jobs]


def judge_records(spec: JudgeSpec, engine: Engine | None, prompts: dict[str, Prompt], completions: list[Completion],
                  seed: int, task: Task | None = None) -> list[Judged]:
    """One chunk's records."""
    return judge_jobs(spec, engine, [ChunkJob(prompts, completions)], seed, task)[0]


# ----------------------------------------------------------------------------- the stage
def judge_shard_key(settings: str, shards: list[ShardInfo]) -> str:
    """A judge's shard for one prompt chunk: its settings and which completion shards it judges (their
    keys, not their contents: a completion shard made again, after some rows failed, keeps its judge
    shard, and only its changed completions are judged again; see `JudgeStage.inputs`)."""
    return content_hash(settings, "by-key", [s.key for s in shards])


def content_key(settings: str, shards: list[ShardInfo]) -> str:
    """The key judge shards had before they were keyed by their completions' shard keys (a run
    from then reads its shards as they are)."""
    return content_hash(settings, [s.sha for s in shards])


def merge_old(records: list[Judged], old: list[Judged] | None) -> list[Judged]:
    """A shard made again from an earlier one: the units judged now in place of the old ones, in the
    old order, then the units the old shard did not have; old units no one asked about again stay."""
    if old is None:
        return records
    redone = {record_unit(r): r for r in records}
    merged = [redone.pop(record_unit(r), r) for r in old]
    return merged + list(redone.values())


@dataclass
class JudgeStage:
    """One judge over a completions manifest (or, on Ray, chunk by chunk as completions are written)."""

    completions: Manifest | None
    spec: JudgeSpec
    default_engine: EngineSettings | None = None
    seed: int = 0
    folder: str | None = None  # default judgements/<judge name>
    name: str = "judge"
    follows: str | None = "generate"

    def __post_init__(self) -> None:
        from rlaif.generation.stage import with_engine_default

        self.spec = with_engine_default(self.spec, self.default_engine)  # its settings hash covers the engine

    @property
    def stage(self) -> str:
        return self.folder or judge_dir(self.spec.name)

    def plan(self, store: RunStore) -> list[Job]:
        assert self.completions is not None
        return [self.plan_group(store, group, shards) for group, shards in self.completions.by_group().items()]

    def plan_group(self, store: RunStore, group: str, before: list[ShardInfo]) -> Job:
        """The chunk's judge shard, done when it was made from the chunk's completion shards as they are."""
        settings, kind = self.spec.settings_hash(), record_type(self.spec)
        key, inputs = judge_shard_key(settings, before), [s.sha for s in before]
        info = store.info(self.stage, key, kind)
        if info is None and (older := store.info(self.stage, content_key(settings, before), kind)) is not None:
            key, info = older.key, older.model_copy(update={"inputs": inputs})  # keyed by these very contents
        shard = Shard(self.stage, key, self.spec.name, info, inputs)
        rows = sum(s.rows for s in before) if info is None or shard.stale else info.retryable
        return Job(group, self.spec.engine_spec(self.default_engine), [shard], rows=rows, detail=before)

    def notes(self, jobs: list[Job]) -> list[str]:
        lines = [f"judge {self.spec.name}: {sum(not j.todo for j in jobs)} of {len(jobs)} shards already done"]
        t = self.spec.judge_template()
        if t.source != PACKAGE and self.spec.templates_dir:  # the recipe's own folder: say which one the run used
            lines.append(f"judge {self.spec.name}: template {t.name}.{t.version} from {t.source} (the recipe's "
                         f"templates_dir)")
        return lines

    def inputs(self, store: RunStore, job: Job) -> tuple[ChunkJob, list[Judged] | None]:
        """The chunk's prompts and completions, and its shard from an earlier run: then what that
        shard judged of these very completions is kept, and only the rest (rows that failed
        transiently, completions made again or new) is judged."""
        (shard,) = job.shards
        by_id = {p.prompt_id: p for p in store.iter(PROMPTS, job.group, Prompt)}
        comps = [c for s in job.detail for c in store.iter(COMPLETIONS, s.key, Completion)]
        if shard.info is None:
            return ChunkJob(by_id, comps), None
        old = store.read(shard.stage, shard.key, record_type(self.spec))
        current = {c.completion_id: c for c in comps}
        keep = frozenset(record_unit(r) for r in old if not r.retryable and unchanged(r, current, shard))
        return ChunkJob(by_id, comps, keep), old

    def size(self, job: Job, inputs: tuple[ChunkJob, list[Judged] | None]) -> int:
        chunk, _ = inputs
        return len(chunk.plan(self.spec)) if self.spec.impl.text else len(chunk.completions)

    def compute(self, engine: Engine | None, batch: list[tuple[Job, tuple]], task: Task | None = None) -> list[list]:
        chunks = [chunk for _, (chunk, _) in batch]
        if task is not None:  # the bar counts requests: asks, re-asks aside
            task.grow(sum(self.size(j, i) for j, i in batch) - sum(j.rows for j, _ in batch))
        records = judge_jobs(self.spec, engine, chunks, self.seed, task)
        if task is not None and not self.spec.impl.text:
            task(sum(len(c.completions) for c in chunks))
        return [[merge_old(r, old)] for r, (_, (_, old)) in zip(records, batch)]

    def manifest(self, jobs: list[Job]) -> Manifest:
        return Manifest(stage=self.stage, shards=[s.info for j in jobs for s in j.shards if s.info is not None])

    def write_report(self, store: RunStore, manifest: Manifest) -> list[str]:
        """`judgements/<name>/report.json`: the judge, its counts, what answered (`served`: verdicts
        per identity) and its manifest (what `stored_manifest` reads). Returns the identities that
        answered this time and never before (a changed snapshot behind the same model name)."""
        spec, path = self.spec, store.root / self.stage / "report.json"
        before = json.loads(path.read_text()).get("served") if path.exists() else None
        served = judged_by(store.read_manifest(manifest, record_type(spec)))
        store.write_json(f"{self.stage}/report.json", {"judge": spec.name, "kind": spec.kind,
                                                       "settings_hash": spec.settings_hash(),
                                                       "spec": spec.model_dump(mode="json", exclude={"endpoint"}),
                                                       **manifest_counts(manifest), "served": served,
                                                       "manifest": manifest.model_dump()})
        return changed(before, served)


def unchanged(r: Judged, current: dict[str, Completion], shard: Shard) -> bool:
    """Whether a record judged the completion(s) the chunk holds now."""
    ids = [r.completion_a, r.completion_b] if isinstance(r, PairJudgement) else [r.completion_id]  # type: ignore[attr-defined]
    if any(i not in current for i in ids):
        return False
    if not r.judged_hash:  # written before records said what they judged: right if the shard was
        return not shard.stale
    return r.judged_hash == judged_hash(r, current)


def run_judge(prompts: Manifest, completions: Manifest, spec: JudgeSpec, store: RunStore,
              engines: EnginePool | None = None, default_engine: EngineSettings | None = None, seed: int = 0) -> Manifest:
    """Judge every chunk of completions not judged yet with these settings, here; returns the manifest.
    (`prompts` are read from the store by chunk: the argument says which run's prompts they are.)"""
    from rlaif.runners.local import LocalExecutor

    stage = JudgeStage(completions, spec, default_engine, seed)
    with LocalExecutor(engines, seed) as executor:
        manifest = executor.run(stage, store)
    stage.write_report(store, manifest)
    return manifest


def manifest_counts(m: Manifest) -> dict[str, int]:
    """parsed / unparsed / failed, and `retried`: how many needed at least one re-ask."""
    c = m.counts()
    return {"total": m.total("rows"), "parsed": c.get("parsed", 0), "retried": c.get("retried", 0),
            "unparsed": c.get("unparsed", 0), "failed": c.get("failed", 0)}


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
    return list(store.read_manifest(manifest, get_kind(info["kind"]).record_type))


# ----------------------------------------------------------------------------- given pairs (evaluation)
def compare_pairs(prompts: list[Prompt], pairs: list[tuple[Completion, Completion]], spec: JudgeSpec,
                  store: RunStore, ctx: RunContext | None = None) -> list[PairJudgement]:
    """Given pairs (a, b) of completions of one prompt each, which is better, by any judge kind.

    A pairwise judge judges them in both orders; a pointwise judge scores each completion and the
    higher score wins (p_a: 1, 0.5 or 0). Stored under `comparisons/<judge name>/`. The engines are
    the context's (its pool, the recipe's engine settings, seed and progress display).
    """
    ctx = ctx or RunContext()
    engines, default_engine, seed, report = ctx.pool, ctx.engine, ctx.seed, ctx.reporter
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
                records = []
                for x, y in pairs:
                    got = {o: answers[f"{content_hash(x.completion_id, y.completion_id)}|{o}"] for o in ("ab", "ba")}
                    served = got["ba"].served or got["ab"].served
                    records.append(pair_judgement(spec, settings, x, y, got).model_copy(update={"served": served}))
            else:
                records = judge_records(spec, engine, by_id, unique, seed, task)
            store.write(stage, key, records)
        finally:
            if own:
                engines.close()
    records = store.read(stage, key, kind)
    if spec.pairwise:
        return records  # type: ignore[return-value]
    return pointwise_verdicts(spec, pairs, records)


def pointwise_verdicts(spec: JudgeSpec, pairs: list[tuple[Completion, Completion]],
                       records: list[Judgement]) -> list[PairJudgement]:
    """Given pairs decided by a pointwise judge's records of their completions: the higher score wins
    (p_a: 1, 0.5 or 0); a pair with a completion the judge could not score is unparsed or failed."""
    settings = spec.settings_hash()
    scores = {j.completion_id: j for j in records}
    out = []
    for a, b in pairs:
        ja, jb = scores[a.completion_id], scores[b.completion_id]
        sa, sb = spec.impl.score(ja), spec.impl.score(jb)
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
