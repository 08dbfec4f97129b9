"""The dataset card's plots, from the few numbers publishing gathers chunk by chunk.

    scores_per_model.png   the score distribution of each model's completions
    margins.png            chosen minus rejected score of every pair
    chosen_rate.png        how often each model's completion was chosen, of the pairs it is in

`PlotData.add` takes one chunk's completions, scores and pairs, so a publish never holds the
whole run's records to draw them. Matplotlib's Agg backend: files only, no display.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.core.records import Completion, PreferencePair


@dataclass
class PlotData:
    scores: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # model -> scores
    margins: list[float] = field(default_factory=list)
    chosen: Counter = field(default_factory=Counter)
    seen: Counter = field(default_factory=Counter)

    def add(self, completions: list[Completion], scores: dict[str, float], pairs: list[PreferencePair]) -> None:
        for c in completions:
            if c.ok and c.completion_id in scores:
                self.scores[c.model].append(scores[c.completion_id])
        for p in pairs:
            self.margins.append(p.score_chosen - p.score_rejected)
            self.chosen[p.chosen_model] += 1
            self.seen[p.chosen_model] += 1
            self.seen[p.rejected_model] += 1


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.4, 3.6), dpi=100)


def _save(plt, fig, ax, path: Path, empty: bool) -> None:
    if empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(out: Path, data: PlotData, score_label: str) -> dict[str, str]:
    """Three PNGs under `out`; returns {title: path relative to the version folder}."""
    out.mkdir(parents=True, exist_ok=True)
    made = {}

    plt, fig, ax = _figure()
    values = [s for v in data.scores.values() for s in v]
    if values:
        lo, hi = min(values), max(values)
        bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi - lo > 1e-6 else 1
        for model, scores in sorted(data.scores.items()):
            ax.hist(scores, bins=bins, histtype="step", linewidth=1.5, label=f"{model} (n={len(scores)})")
        ax.legend(fontsize=8)
    ax.set(title="Score distribution per model", xlabel=f"score ({score_label})", ylabel="completions")
    _save(plt, fig, ax, out / "scores_per_model.png", not values)
    made["Score distribution per model"] = "plots/scores_per_model.png"

    plt, fig, ax = _figure()
    if data.margins:
        spread = max(data.margins) - min(data.margins)
        ax.hist(data.margins, bins=20 if spread > 1e-6 else 1, color="tab:blue")
    ax.set(title="Chosen minus rejected score", xlabel="margin", ylabel="pairs")
    _save(plt, fig, ax, out / "margins.png", not data.margins)
    made["Chosen minus rejected margin"] = "plots/margins.png"

    plt, fig, ax = _figure()
    models = sorted(data.seen)
    if models:
        bars = ax.bar(models, [data.chosen[m] / data.seen[m] for m in models], color="tab:green")
        for b, m in zip(bars, models):
            ax.annotate(f"{data.chosen[m]}/{data.seen[m]}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.1)
    ax.set(title="How often each model's completion was chosen", ylabel="chosen / pairs it is in")
    _save(plt, fig, ax, out / "chosen_rate.png", not models)
    made["How often each model was chosen"] = "plots/chosen_rate.png"
    return made


def write_drift_plot(out: Path, checks: list[dict]) -> dict[str, str]:
    """drift.png: the judge's sentinel checks (judges/sentinels.py) over dataset versions: the share of
    sentinel preferences flipped since the first check, and the mean score shift."""
    out.mkdir(parents=True, exist_ok=True)
    plt, fig, ax = _figure()
    names = [f"v{c['version']:04d}" if c.get("version") else f"check {c['number']}" for c in checks]
    flips = [((c.get("drift") or {}).get("flip_rate") or 0.0) for c in checks]
    shifts = [((c.get("drift") or {}).get("score_shift") or 0.0) for c in checks]
    ax.plot(names, flips, marker="o", color="tab:red", label="preferences flipped")
    ax.set_ylim(0, max(1.0, *flips) if flips else 1.0)
    ax.set(title="Judge drift on the sentinels (since the first check)", ylabel="share flipped")
    twin = ax.twinx()
    twin.plot(names, shifts, marker="s", color="tab:blue", linestyle="--", label="score shift")
    twin.set_ylabel("mean score shift")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    _save(plt, fig, ax, out / "drift.png", not checks)
    return {"Judge drift on the sentinels": "plots/drift.png"}
