"""The judge stage: every completion (or pair of completions) judged by one judge, shard by shard.

    run_judge(prompts, completions, spec, store)       -> Judgement / PairJudgement records
    compare_pairs(prompts, pairs, spec, store)         -> PairJudgement records for given pairs
    judge_counts(records)                              -> parsed / retried / unparsed / failed

Requests go to vLLM's offline engine (guided decoding: the output's JSON schema or regex) or to an
OpenAI-compatible endpoint (`response_format` json_schema; vLLM's `structured_outputs` for a regex),
always asking for the verdict tokens' log-probs. An output that does not parse is asked again, up
to `spec.retries` times at `spec.retry_temperature` with a new seed; one that never parses is
stored as unparsed with its raw text. Shards are keyed by the judge's settings hash and the
completions' content, so a judge already run is read back, and two judges sit side by side in
`judgements/<judge name>/` with a `report.json` of their counts.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from contextlib import nullcontext
from itertools import combinations

from generation.engines import EngineSettings, VLLMEngine
from generation.models import resolve_model
from generation.records import Completion, Judgement, PairJudgement, Prompt, content_hash
from generation.remote import run_requests
from generation.store import RunStore
from judges.kinds import (Answer, JudgeRequest, output_format, pair_id, pair_judgement, pair_requests,
                          pointwise_judgement, pointwise_requests)
from judges.parsing import OutputFormat, parse_output, vllm_token_logprobs
from judges.spec import JudgeSpec

log = logging.getLogger(__name__)
STAGE = "judgements"


def _seed(seed: int, key: tuple[str, str], attempt: int) -> int:
    return int(content_hash(seed, key, attempt), 16) % (2**31)


def chat_text(tokenizer, messages: list[dict]) -> str:
    """The model's chat template; a base model without one gets a plain transcript ending in the
    assistant's turn (its output is held to the format by guided decoding all the same)."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return (tokenizer.bos_token or "") + "\n\n".join(turns) + "\n\nAssistant:"


def _offline(llm: VLLMEngine, spec: JudgeSpec, fmt: OutputFormat, requests: list[JudgeRequest],
             temperature: float, seed: int, attempt: int) -> list[tuple[str | None, list | None, str | None, bool]]:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    tok = llm.tokenizer
    constraint = None
    if spec.structured:
        constraint = StructuredOutputsParams(json=fmt.schema()) if fmt.json_model else StructuredOutputsParams(regex=fmt.regex)
    results: list = [None] * len(requests)
    ids, params, where = [], [], []
    for i, r in enumerate(requests):
        text = chat_text(tok, r.messages)
        tokens = list(tok(text, add_special_tokens=False).input_ids)
        room = llm.max_model_len - len(tokens)
        if room < 8:
            results[i] = (None, None, f"judge prompt of {len(tokens)} tokens exceeds the context of {llm.max_model_len}", False)
            continue
        ids.append(tokens)
        where.append(i)
        params.append(SamplingParams(temperature=temperature, top_p=spec.sampling.top_p,
                                     max_tokens=min(spec.sampling.max_tokens, room), seed=_seed(seed, r.key, attempt),
                                     logprobs=spec.top_logprobs, structured_outputs=constraint))
    if ids:
        for i, out in zip(where, llm.generate(ids, params, progress=False)):
            o = out.outputs[0]
            results[i] = (o.text, vllm_token_logprobs(o), None, False)
    return results


def _remote(spec: JudgeSpec, fmt: OutputFormat, requests: list[JudgeRequest], temperature: float,
            seed: int, attempt: int) -> list[tuple[str | None, list | None, str | None, bool]]:
    bodies = []
    for r in requests:
        body = dict(messages=r.messages, temperature=temperature, top_p=spec.sampling.top_p,
                    max_tokens=spec.sampling.max_tokens, seed=_seed(seed, r.key, attempt),
                    logprobs=True, top_logprobs=spec.top_logprobs)
        if spec.structured and fmt.json_model:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.json_model.__name__, "schema": fmt.schema(), "strict": True}}
        elif spec.structured and fmt.regex:  # vLLM's server extension; other servers: structured: false
            body["extra_body"] = {"structured_outputs": {"regex": fmt.regex}}
        bodies.append(body)
    results = run_requests(spec.endpoint, spec.model, bodies, desc=f"judge {spec.name}")
    return [(r.text, r.logprobs, r.error, r.retryable) for r in results]


def ask(spec: JudgeSpec, requests: list[JudgeRequest], llm: VLLMEngine | None, seed: int = 0) -> dict[tuple, Answer]:
    """Send every request; re-ask those whose output did not parse, up to `spec.retries` times."""
    fmt = output_format(spec)
    answers: dict[tuple, Answer] = {}
    pending = list(requests)
    for attempt in range(spec.retries + 1):
        if not pending:
            break
        temperature = spec.sampling.temperature if attempt == 0 else spec.retry_temperature
        if spec.endpoint is not None:
            outs = _remote(spec, fmt, pending, temperature, seed, attempt)
        else:
            outs = _offline(llm, spec, fmt, pending, temperature, seed, attempt)
        again = []
        for r, (text, tokens, error, retryable) in zip(pending, outs):
            if error is not None or text is None:  # the request failed: not a parse problem
                answers[r.key] = Answer(None, attempt, error or "no text returned", retryable)
                continue
            parsed = parse_output(fmt, text, tokens)
            answers[r.key] = Answer(parsed, attempt)
            if parsed.value is None:
                again.append(r)
        if again and attempt < spec.retries:
            log.info("judge %s: %d outputs did not parse; asking again (%d of %d)", spec.name, len(again),
                     attempt + 1, spec.retries)
        pending = again
    return answers


def _engine(spec: JudgeSpec, settings: EngineSettings | None, seed: int, llm: VLLMEngine | None):
    if spec.endpoint is not None or llm is not None:
        return nullcontext(llm)
    return VLLMEngine(resolve_model(spec.model), settings, seed=seed, compact_json=True)


def judge_completions(spec: JudgeSpec, prompts: dict[str, Prompt], completions: list[Completion],
                      llm: VLLMEngine | None, seed: int = 0) -> list[Judgement]:
    """Pointwise kinds: one shard of completions, every aspect, in one batch per attempt."""
    requests = [r for c in completions if c.ok for r in pointwise_requests(spec, prompts[c.prompt_id], c)]
    answers = ask(spec, requests, llm, seed)
    settings = spec.settings_hash()
    by_completion: dict[str, dict[str, Answer]] = {}
    for (cid, aspect), a in answers.items():
        by_completion.setdefault(cid, {})[aspect] = a
    return [pointwise_judgement(spec, settings, c, by_completion.get(c.completion_id, {})) for c in completions]


def judge_pairs(spec: JudgeSpec, prompts: dict[str, Prompt], pairs: list[tuple[Completion, Completion]],
                llm: VLLMEngine | None, seed: int = 0) -> list[PairJudgement]:
    """Pairwise kinds: each pair in both orders."""
    requests = [r for a, b in pairs for r in pair_requests(spec, prompts[a.prompt_id], a, b)]
    answers = ask(spec, requests, llm, seed)
    settings = spec.settings_hash()
    out = []
    for a, b in pairs:
        k = pair_id(a, b)
        out.append(pair_judgement(spec, settings, a, b, {"ab": answers[(k, "ab")], "ba": answers[(k, "ba")]}))
    return out


def all_pairs(completions: list[Completion]) -> list[tuple[Completion, Completion]]:
    """Every pair of usable completions of the same prompt, in the order they were generated."""
    by_prompt: dict[str, list[Completion]] = {}
    for c in completions:
        if c.ok:
            by_prompt.setdefault(c.prompt_id, []).append(c)
    return [pair for cs in by_prompt.values() for pair in combinations(cs, 2)]


def _stale(records) -> bool:
    return any(r.retryable for r in records)


def run_judge(prompts: list[Prompt], completions: list[Completion], spec: JudgeSpec, store: RunStore,
              engine: EngineSettings | None = None, shard_size: int = 256, seed: int = 0,
              llm: VLLMEngine | None = None, stage: str | None = None) -> list[Judgement] | list[PairJudgement]:
    """Judge every completion (pointwise kinds) or every pair of a prompt's completions (pairwise
    kinds) with one judge; shards already judged with these settings are read back."""
    by_id = {p.prompt_id: p for p in prompts}
    stage = stage or f"{STAGE}/{spec.name}"
    settings = spec.settings_hash()
    if spec.pairwise:
        units = all_pairs(completions)
        record = PairJudgement
        content = lambda shard: [(a.completion_id, a.text, b.completion_id, b.text) for a, b in shard]  # noqa: E731
    else:
        units, record = completions, Judgement
        # keyed on text and error too: a row regenerated since its failure is judged again
        content = lambda shard: [(c.completion_id, c.text, c.error) for c in shard]  # noqa: E731
    todo = [(content_hash(settings, content(units[i : i + shard_size])), units[i : i + shard_size])
            for i in range(0, len(units), shard_size)]
    done = {k: store.read(stage, k, record) for k, _ in todo if store.has(stage, k)}
    missing = [(k, s) for k, s in todo if k not in done or _stale(done[k])]
    if missing:
        if spec.kind == "reward_model":
            from judges.reward_model import RewardScorer

            with RewardScorer(spec) as scorer:
                for key, shard in missing:
                    done[key] = scorer.judge(by_id, shard)
                    store.write(stage, key, done[key])
        else:
            with _engine(spec, engine, seed, llm) as eng:
                for key, shard in missing:
                    judge_shard = judge_pairs if spec.pairwise else judge_completions
                    done[key] = judge_shard(spec, by_id, shard, eng, seed)
                    store.write(stage, key, done[key])
    records = [j for key, _ in todo for j in done[key]]
    counts = judge_counts(records)
    store.write_json(f"{stage}/report.json", {"judge": spec.name, "kind": spec.kind, "settings_hash": settings,
                                               "spec": spec.model_dump(mode="json", exclude={"endpoint"}),
                                               **counts})
    return records


def compare_pairs(prompts: list[Prompt], pairs: list[tuple[Completion, Completion]], spec: JudgeSpec,
                  store: RunStore, engine: EngineSettings | None = None, seed: int = 0,
                  llm: VLLMEngine | None = None) -> list[PairJudgement]:
    """Given pairs (a, b) of completions of one prompt each, which is better, by any judge kind.

    A pairwise judge judges them in both orders; a pointwise judge scores each completion and the
    higher score wins (p_a: 1, 0.5 or 0). Stored under `comparisons/<judge name>/`.
    """
    stage = f"comparisons/{spec.name}"
    by_id = {p.prompt_id: p for p in prompts}
    settings = spec.settings_hash()
    if spec.pairwise:
        key = content_hash(settings, [(a.completion_id, a.text, b.completion_id, b.text) for a, b in pairs])
        if not store.has(stage, key) or _stale(store.read(stage, key, PairJudgement)):
            with _engine(spec, engine, seed, llm) as eng:
                store.write(stage, key, judge_pairs(spec, by_id, pairs, eng, seed))
        return store.read(stage, key, PairJudgement)
    unique = list({c.completion_id: c for pair in pairs for c in pair}.values())
    scores = {j.completion_id: j for j in run_judge(prompts, unique, spec, store, engine, seed=seed, llm=llm, stage=stage)}
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
            out.append(PairJudgement(**base, status="parsed", winner=winner,
                                     p_a={"a": 1.0, "b": 0.0, "tie": 0.5}[winner]))
    return out


def judge_counts(records: list[Judgement] | list[PairJudgement]) -> dict[str, int]:
    """parsed / unparsed / failed, and `retried`: how many needed at least one re-ask."""
    status = Counter(r.status for r in records)
    return {"total": len(records), "parsed": status["parsed"], "retried": sum(r.retries > 0 for r in records),
            "unparsed": status["unparsed"], "failed": status["failed"]}


def stored_judgements(store: RunStore, judge: str) -> list[Judgement] | list[PairJudgement]:
    """A judge's records in a run, as its last run left them (older settings' shards are skipped)."""
    report = store.root / STAGE / judge / "report.json"
    if not report.exists():
        have = sorted(p.name for p in (store.root / STAGE).iterdir()) if (store.root / STAGE).is_dir() else []
        raise FileNotFoundError(f"{store.root}: no judgements by {judge!r} (judges in this run: {have})")
    info = json.loads(report.read_text())
    kind = PairJudgement if info["kind"] in ("pairwise", "mt_bench_pairwise") else Judgement
    return [r for r in store.read_all(f"{STAGE}/{judge}", kind) if r.settings_hash == info["settings_hash"]]
