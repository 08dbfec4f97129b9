"""A run directory to label, written as the stages leave it (prompt chunks, completion shards, two
judges' shards and reports), with no model: answers with markdown and code, and two judges whose
scores are known, so a test can say what each judge prefers on any pair."""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.core.records import AspectRating, Completion, Judgement, Message, Prompt, content_hash
from rlaif.core.store import Manifest, RunStore
from rlaif.judges.stage import judge_dir
from rlaif.prompts.prompt_sets import write_prompt_chunks

TOPICS = ["reverse a list", "count words in a file", "merge two sorted lists", "check a palindrome",
          "read a CSV file", "find duplicates", "flatten a nested list", "parse a date"]
MODELS = ("alpha", "beta", "gamma")


def answer(topic: str, model: str, k: int) -> str:
    """A markdown answer: prose, a list, a fenced code block, and HTML a page must show as text."""
    code = {"alpha": f"def solve(xs):\n    # {topic}\n    return sorted(xs)[::-1]",
            "beta": f"def solve(xs):\n    return [x for x in xs]  # {topic}, naively",
            "gamma": "print('<b>not bold</b>')"}[model]
    return (f"**{model.title()}** on how to *{topic}* in Python:\n\n"
            f"1. read the input\n2. apply `solve`\n3. print the result\n\n"
            f"```python\n{code}\n```\n\n<script>document.title='x'</script> Takes O(n{'^2' * (model == 'beta')}) "
            f"time (answer {k}).")


def scores(judge: str, k: int, model: str) -> float:
    """uf prefers alpha > gamma > beta with margins that vary by prompt; crit reverses alpha and beta on
    odd prompts (so the two judges disagree there)."""
    base = {"alpha": 4.0, "beta": 2.0 + 0.25 * (k % 4), "gamma": 3.0 + 0.1 * k}[model]
    if judge == "crit" and k % 2:
        base = {"alpha": 2.0, "beta": 4.5}.get(model, base)
    return base


def build_run(root: str | Path) -> tuple[RunStore, list[Prompt], list[Completion]]:
    store = RunStore(root)
    prompts = [Prompt(prompt_id=f"q{k}", messages=[Message(role="user", content=f"How do I {t} in Python? Show code.")])
               for k, t in enumerate(TOPICS)]
    pm = write_prompt_chunks(prompts, store, 4)  # two chunks
    chunk_of = {p.prompt_id: s.key for s in pm.shards for p in store.read("prompts", s.key, Prompt)}
    completions = [Completion(completion_id=content_hash(p.prompt_id, m), prompt_id=p.prompt_id, prompt_hash=p.hash,
                              model=m, settings_hash=m, text=answer(TOPICS[k], m, k))
                   for k, p in enumerate(prompts) for m in MODELS]
    for s in pm.shards:
        store.write("completions", content_hash("c", s.key), [c for c in completions if chunk_of[c.prompt_id] == s.key],
                    group=s.key)
    for name in ("uf", "crit"):
        m = Manifest(stage=judge_dir(name))
        for s in pm.shards:
            mine = [judged(name, c, scores(name, int(c.prompt_id[1:]), c.model))
                    for c in completions if chunk_of[c.prompt_id] == s.key]
            m.shards.append(store.write(m.stage, content_hash(name, s.key), mine, group=s.key, name=name))
        store.write_json(f"{m.stage}/report.json", {"judge": name, "kind": "ultrafeedback", "manifest": m.model_dump()})
    (store.root / "recipe.json").write_text(json.dumps({"name": "label-test", "binarize": {"judge": "uf"}}))
    return store, prompts, completions


def judged(judge: str, c: Completion, score: float) -> Judgement:
    return Judgement(judgement_id=content_hash(judge, c.completion_id), completion_id=c.completion_id,
                     prompt_id=c.prompt_id, model=c.model, judge=judge, judge_model="judge-135m",
                     template="ultrafeedback_rating", template_version="v1", template_hash="t", settings_hash=judge,
                     sampling={}, status="parsed",
                     aspects={a: AspectRating(rating=round(score), expected=score) for a in ("helpfulness", "honesty")})


def preference(judge: str, completions: list[Completion], a: str, b: str) -> str:
    """Which of completions a, b the judge prefers: a, b or tie."""
    by_id = {c.completion_id: c for c in completions}
    sa, sb = (scores(judge, int(by_id[x].prompt_id[1:]), by_id[x].model) for x in (a, b))
    return "a" if sa > sb else "b" if sb > sa else "tie"
