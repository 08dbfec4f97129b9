"""The measurements of on-policy rounds (flows/rounds.py): one row per round, one table, one plot.

Per round k, on the held-out prompts no round trains on (every model answers them greedily,
flows/rounds.py), judged by the rounds' fixed judge:
    win vs previous    round k's answers against round k-1's (round 1: against the dSFT model)
    win vs round 1     against round 1's (from round 2)
    win vs dSFT        against the dSFT model's
                       each = (wins + ties / 2) / judged pairs: a pointwise judge scores both answers
                       (the order does not enter), a pairwise judge judges both orders and a verdict
                       the order flips is a tie (judges/stage.py `compare_pairs`)
    judge score        the judge's mean score of round k's answers (its expected score where it gives
                       probabilities); the dSFT model's is the table's first row
    answer tokens      the mean length of round k's answers: iterative DPO's known failure is answers
                       that grow to please the judge, which this column shows as it starts
    reward acc         on round k's own test_prefs: the share of pairs whose implicit reward
                       beta (log pi_k - log pi_ref) is higher for the chosen answer (ref: the reference
                       round k trained against), as `rlaif evaluate` measures it (evaluation/win_rate.py)
    pairs, steps       round k's training pairs and steps
    mt-bench           with `rounds.mt_bench`: round k's MT-Bench score (evaluation/mt_bench.py: the mean
                       1-10 rating over both turns of its questions); the dSFT model's is in the title.
                       A column only of series that ask for it
Written to `<run>/rounds/summary.json` (the rows), `<run>/rounds/rounds.md` and `<run>/rounds/rounds.png`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = ("round", "policy", "win vs previous", "win vs round 1", "win vs dSFT", "judge score", "answer tokens",
           "reward acc", "test pairs", "pairs", "steps")
MT_BENCH = "mt-bench"


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns: COLUMNS, and MT-Bench's where a row has it (a series with `rounds.mt_bench`)."""
    return list(COLUMNS) + ([MT_BENCH] if any(MT_BENCH in r for r in rows) else [])


def win_rate(verdicts: list[Any]) -> dict[str, Any]:
    """(wins + ties / 2) / judged of the `a` side, over PairJudgement records."""
    parsed = [v for v in verdicts if v.status == "parsed"]
    wins, losses = sum(v.winner == "a" for v in parsed), sum(v.winner == "b" for v in parsed)
    ties = len(parsed) - wins - losses
    return {"rate": (wins + ties / 2) / len(parsed) if parsed else None, "wins": wins, "losses": losses, "ties": ties,
            "judged": len(parsed), "unjudged": len(verdicts) - len(parsed),
            "order_changed_verdict": sum(bool(getattr(v, "order_changed_verdict", False)) for v in parsed)}


def mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def reward_accuracy(model: str, reference: str, rows: list[dict], beta: float) -> dict[str, Any]:
    """The implicit reward's accuracy and margin of `model` against `reference` on preference rows."""
    from rlaif.evaluation.win_rate import answer_logps, preference_metrics

    if not rows:
        return {"accuracy": None, "margin": None, "pairs": 0}
    m = preference_metrics(answer_logps(model, rows), answer_logps(reference, rows), beta)
    return {**{k: m["dpo_implicit_reward"][k] for k in ("accuracy", "margin")}, "pairs": m["pairs"]}


def table_row(m: dict[str, Any]) -> dict[str, Any]:
    """A round's measurement as the table's row."""
    wins = m.get("wins", {})
    row = {"round": m["round"], "policy": m.get("model"),
           "win vs previous": (wins.get("previous") or {}).get("rate"),
           "win vs round 1": (wins.get("round 1") or {}).get("rate"),
           "win vs dSFT": (wins.get("dsft") or {}).get("rate"),
           "judge score": m.get("judge_score"), "answer tokens": m.get("answer_tokens"),
           "reward acc": (m.get("reward") or {}).get("accuracy"), "test pairs": (m.get("reward") or {}).get("pairs"),
           "pairs": m.get("pairs"), "steps": m.get("steps")}
    if "mt_bench" in m:  # measured with rounds.mt_bench
        row[MT_BENCH] = (m["mt_bench"] or {}).get("score")
    return row


def title(dsft: dict[str, Any] | None) -> str:
    """What the table's title says of the dSFT model (held-out prompts, its judge score, length, MT-Bench)."""
    d = dsft or {}
    mt = f", MT-Bench {cell(d['mt_bench'].get('score'))}" if d.get("mt_bench") else ""
    return (f"held-out prompts: {d.get('prompts', '-')}; dSFT: judge score {cell(d.get('judge_score'))}, "
            f"answer tokens {cell(d.get('answer_tokens'))}{mt}")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def write_report(root: Path, measured: list[dict[str, Any]], dsft: dict[str, Any] | None) -> dict[str, Any]:
    """rounds/summary.json, rounds.md and rounds.png from the rounds' measurements; returns the rows."""
    rows = [table_row(m) for m in measured]
    root.mkdir(parents=True, exist_ok=True)
    summary = {"rows": rows, "dsft": dsft, "rounds": measured}
    tmp = root / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(root / "summary.json")
    shown = [c for c in columns(rows) if c != "policy"]
    mt = (dsft or {}).get("mt_bench")
    lines = ["# On-policy rounds", "",
             f"Held-out prompts: {dsft.get('prompts') if dsft else '-'}; the dSFT model's judge score "
             f"{cell((dsft or {}).get('judge_score'))}, answer tokens {cell((dsft or {}).get('answer_tokens'))}"
             + (f", MT-Bench {cell(mt.get('score'))} ({mt.get('questions')} questions, judge {mt.get('judge')})"
                if mt else "") + ". Definitions: rlaif/evaluation/rounds_report.py.", "",
             "| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in shown) + " |" for r in rows]
    (root / "rounds.md").write_text("\n".join(lines) + "\n")
    plot(root / "rounds.png", rows, dsft)
    return summary


def plot(path: Path, rows: list[dict[str, Any]], dsft: dict[str, Any] | None) -> None:
    """Win rates, judge score and answer length against the round, in one figure of three panels
    (four with MT-Bench's score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("judge score", "judge_score"), ("answer tokens", "answer_tokens")]
    if any(MT_BENCH in r for r in rows):
        panels.append((MT_BENCH, MT_BENCH))
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(11 / 3 * (1 + len(panels)), 3.4))
    x = [r["round"] for r in rows]
    for col in ("win vs previous", "win vs round 1", "win vs dSFT", "reward acc"):
        points = [(r["round"], r[col]) for r in rows if r[col] is not None]
        if points:
            axes[0].plot(*zip(*points), marker="o", label=col)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set(title="win rate, reward accuracy", xlabel="round", ylim=(-0.05, 1.05))
    axes[0].legend(fontsize=7)
    for ax, (col, key) in zip(axes[1:], panels):
        points = [(r["round"], r.get(col)) for r in rows if r.get(col) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label="round k")
        base = (dsft or {}).get("mt_bench", {}).get("score") if col == MT_BENCH else (dsft or {}).get(key)
        if base is not None:
            ax.axhline(base, color="grey", lw=0.8, ls="--", label="dSFT")
        ax.set(title="MT-Bench (1-10)" if col == MT_BENCH else col + " (held-out)", xlabel="round")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
