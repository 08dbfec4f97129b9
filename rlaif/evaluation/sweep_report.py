"""One report of a dDPO sweep: its variants side by side, against the dSFT model they all started from.

    rlaif evaluate runs/sweep                  # every trained variant: eval/variants.md, .json, plots
    rlaif evaluate runs/sweep --variant ipo-0.1   # one variant, as a single dDPO is evaluated

Per variant (`<run>/dpo/<name>`, training/dpo.py), each measured as `evaluate_run` (evaluation/win_rate.py) measures a single
dDPO model (evaluation/win_rate.py has the definitions), on `test_prefs`:
    loss, beta             what it trained with (its stage state)
    reward acc / margin    the implicit reward r = beta (log pi - log pi_dSFT): the share of pairs with
                           r(chosen) > r(rejected), and the mean of r(chosen) - r(rejected)
    drift chosen/rejected  the mean change of log pi(y|x) from the reference (dSFT) on the chosen and on
                           the rejected answers: how far the policy moved, which DPO's KL term restrains
    win rate               the judge's preference of the variant's answers over dSFT's (wins + ties/2)
    answer tokens          the mean length of the variant's answers the win rate judged
    steps, train loss      from its training
The dSFT model's log-probs are computed once for all variants. Written to `<run>/eval/variants.md`
(a Markdown table), `<run>/eval/variants.json` and `<run>/eval/variants/plots/`: the reward margins
over training of every variant in one plot, and win rate against drift (where a win rate was judged).
Each variant's own evaluation goes to `<run>/eval/variants/<name>/`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rlaif.core.errors import ConfigError

log = logging.getLogger(__name__)
COLUMNS = ("variant", "loss", "beta", "reward acc", "margin", "drift chosen", "drift rejected", "win rate",
           "answer tokens", "steps", "train loss")


def trained_variants(run: Path) -> list[str]:
    """The sweep's variants with a finished model (a stage state and weights), in name order."""
    return sorted(p.parent.name for p in (run / "dpo").glob("*/rlaif-stage.json") if (p.parent / "config.json").exists())


def report_variants(run_dir: str | Path, judge: Any = None, ctx: Any = None, max_tokens: int = 256,
                    win_rate: bool = True) -> dict[str, Any]:
    """Evaluate every trained variant (on the engines of `ctx`, a RunContext) and write the report;
    returns {rows, table, plots}."""
    from rlaif.evaluation.win_rate import answer_logps, evaluate_run
    from rlaif.training.common import load_splits, stage_state

    run = Path(run_dir)
    names = trained_variants(run)
    if not names:
        raise ConfigError(f"{run / 'dpo'}: no trained variants; run `rlaif train dpo` with train.dpo.variants first")
    starts = {(stage_state(run / "dpo" / n) or {}).get("start_model") or str(run / "sft") for n in names}
    test = load_splits(run / "dataset")["test_prefs"]
    rows = test.select_columns(["prompt", "chosen", "rejected"]).to_list()
    shared = answer_logps(next(iter(starts)), rows) if len(starts) == 1 and rows else None  # one reference pass
    table = []
    for name in names:
        m = evaluate_run(run, judge, ctx, max_tokens, win_rate, variant=name, sft_scores=shared)
        state = stage_state(run / "dpo" / name) or {}
        table.append(row(name, m, state))
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps(table, indent=2))
    (out / "variants.md").write_text(markdown(table, run))
    plots = plot_variants(run, names, table, out / "variants" / "plots")
    return {"rows": table, "table": str(out / "variants.md"), "plots": plots}


def row(name: str, m: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    reward, drift, wins = m["dpo_implicit_reward"], m["drift"], m.get("win_rate") or {}
    loss = state.get("loss_type")
    return {"variant": name, "loss": "+".join(loss) if isinstance(loss, list) else loss, "beta": m["beta"],
            "reward acc": reward["accuracy"], "margin": reward["margin"],
            "drift chosen": drift["chosen"], "drift rejected": drift["rejected"],
            "win rate": wins.get("ddpo_win_rate"), "answer tokens": wins.get("ddpo_answer_tokens"),
            "steps": state.get("metrics", {}).get("steps"), "train loss": state.get("metrics", {}).get("train_loss"),
            "pairs": m["pairs"], "judged": wins.get("judged")}


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def cells(table: list[dict[str, Any]]) -> list[list[str]]:
    return [[cell(r[c]) for c in COLUMNS] for r in table]


def markdown(table: list[dict[str, Any]], run: Path) -> str:
    pairs = table[0]["pairs"] if table else 0
    lines = [f"# dDPO variants of {run.name}", "",
             f"On test_prefs ({pairs} pairs), against the dSFT model every variant started from (its reference). "
             f"Definitions: rlaif/evaluation/sweep_report.py.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in cells(table)]
    return "\n".join(lines) + "\n"


def plot_variants(run: Path, names: list[str], table: list[dict[str, Any]], out: Path) -> list[str]:
    """rewards/margins over training steps, one line per variant; win rate against drift, one point each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in names:
        state = run / "dpo" / name / "trainer_state.json"
        history = json.loads(state.read_text())["log_history"] if state.exists() else []
        points = [(h["step"], h["rewards/margins"]) for h in history if "rewards/margins" in h]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=name)
    ax.set(title="dDPO variants: reward margin (train)", xlabel="step", ylabel="rewards/margins")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "margins.png", dpi=100)
    plt.close(fig)
    written.append(str(out / "margins.png"))
    judged = [r for r in table if r["win rate"] is not None]
    if judged:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for r in judged:
            x = (r["drift chosen"] + r["drift rejected"]) / 2
            ax.scatter([x], [r["win rate"]])
            ax.annotate(r["variant"], (x, r["win rate"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(title="win rate against dSFT vs drift", xlabel="mean log-prob shift from the reference (test answers)",
               ylabel="win rate")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "win_rate_vs_drift.png", dpi=100)
        plt.close(fig)
        written.append(str(out / "win_rate_vs_drift.png"))
    return written
