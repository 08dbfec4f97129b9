"""The prompts stage streams: hygiene read from the source pass by pass, near duplicates compared
from a file of embeddings block by block, with the same result as the in-memory checks."""

from __future__ import annotations

import json

import numpy as np

from rlaif.core.records import Message, Prompt
from rlaif.core.store import RunStore
from rlaif.prompts.hygiene import HygieneSpec, clean_prompts, greedy_near, prepare_prompts


def prompt(pid: str, text: str) -> Prompt:
    return Prompt(prompt_id=pid, messages=[Message(role="user", content=text)])


def test_greedy_near_by_blocks_matches_all_at_once():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 8))
    e = np.concatenate([base, base[[1, 5, 5, 11, 0]] + 0.01 * rng.normal(size=(5, 8))])[rng.permutation(17)]
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    whole = greedy_near(lambda a, b: e[a:b], len(e), 0.99, block=len(e))
    assert len(whole) == 5  # each copy goes (a copy of a copy matches the first kept one)
    for block in (1, 2, 3, 5, 16):
        assert greedy_near(lambda a, b: e[a:b], len(e), 0.99, block=block) == whole


def test_the_streamed_stage_keeps_and_reports_what_the_in_memory_checks_do(tmp_path):
    texts = {"a": "How do I bake sourdough bread at home?", "b": "How can I bake sourdough bread at home?",
             "c": "What is the capital of Australia?", "d": "how do i bake   sourdough bread at HOME?",
             "e": "Summarize the plot of Hamlet in two sentences.", "f": "What is the capital of Australia?",
             "g": "Name three prime numbers larger than one hundred."}
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt_id": k, "prompt": v}) + "\n" for k, v in texts.items()))
    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"prompt_id": "ev", "prompt": "Summarize the plot of Hamlet in two sentences."}\n')
    spec = HygieneSpec(near_dup_threshold=0.9, eval_prompts=str(evals), ngram=5)
    store = RunStore(tmp_path / "run")
    manifest, report = prepare_prompts(str(source), "train", None, spec, store, shard_size=2)
    kept, expected = clean_prompts([prompt(k, v) for k, v in texts.items()], spec)
    assert report == expected
    assert report.removed == {"exact duplicate": ["d", "f"], "near duplicate": ["b"], "overlaps eval set": ["e"]}
    written = [p.prompt_id for s in manifest.shards for p in store.iter("prompts", s.key, Prompt)]
    assert written == [p.prompt_id for p in kept] == ["a", "c", "g"] and [s.rows for s in manifest.shards] == [2, 1]
    assert not list((tmp_path / "run").rglob("*.tmp"))  # the embeddings file is gone
    # a rerun reads the report back: the same chunks, nothing embedded again
    (cached,) = (tmp_path / "run" / "prompts").glob("hygiene-*.json")
    stamp = cached.stat().st_mtime_ns
    again, report2 = prepare_prompts(str(source), "train", None, spec, store, shard_size=2)
    assert again == manifest and report2 == report and cached.stat().st_mtime_ns == stamp
