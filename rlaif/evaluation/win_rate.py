"""Evaluation of a trained run: did dDPO improve on its dSFT start?

Usage:

    rlaif evaluate runs/quickstart                      # writes runs/quickstart/eval/
    evaluate_run("runs/quickstart")

Writes `<run>/eval/metrics.json` and `<run>/eval/plots/*.png`, and returns the metrics. The models
are `<run>/dpo` (dDPO) and the model it started from (recorded in `<run>/dpo/rlaif-stage.json`,
normally `<run>/sft`: the dSFT model). Metrics, on the pairs of `test_prefs` (never trained on):

- log pi(y|x): the sum of the model's token log-probabilities of answer y after prompt x, rendered
  with the model's chat template (the quantity DPO's loss is built from).
- implicit reward of the dDPO model (`dpo_implicit_reward`), with the dSFT model as reference:
  r(x, y) = beta * (log pi_dDPO(y|x) - log pi_dSFT(y|x)), beta the one the dDPO model was trained
  with (its `rlaif-stage.json`, whatever recipe.json says: a chain's first step may have had none).
  `accuracy` = share of pairs with r(x, chosen) > r(x, rejected), a tie counting half; `margin` =
  mean of r(x, chosen) - r(x, rejected); `chosen` / `rejected` = mean rewards. These are TRL's
  rewards/* metrics computed on held-out pairs.
- the dSFT model's own implicit reward (`dsft_implicit_reward`): it is its own reference, so its
  reward is 0 on every answer, every pair is a tie: accuracy 0.5 (chance) and margin 0, exactly what
  TRL logs at step 0 of dDPO. dDPO beats its dSFT start on reward accuracy when its implicit-reward
  accuracy is above 0.5: it moved more held-out pairs towards the chosen answer than away from it.
  Equivalently: accuracy = share of pairs whose log-ratio log pi(chosen) - log pi(rejected) dDPO
  increased over dSFT, and margin = beta x the change of the mean log-ratio.
- each model's own preference (`preference`, `preference_per_token`): `accuracy` = share of pairs
  with log pi(chosen|x) > log pi(rejected|x) (per token: each divided by the answer's token count,
  which removes the sum's bias towards short answers), `margin` = mean of that difference; `gain*` =
  dDPO minus dSFT. This asks more than the reward: that dDPO now ranks the pair the judge's way
  outright, not only that it moved towards it.
- win rate (`win_rate`): both models answer the test prompts (greedy, `max_tokens`: by default the
  run's generators' longest), and the run's judge (`binarize.judge`, else the first) compares each
  pair of answers with `rlaif.judges.stage.compare_pairs`: a pairwise judge in both orders (a verdict the
  order flips is a tie), a pointwise judge by scoring both answers. dDPO's win rate = (wins +
  ties / 2) / judged pairs; pairs the judge could not parse are counted apart (`unjudged`).

- drift from the reference (`drift`): the mean change of log pi(y|x) from dSFT to dDPO on the chosen
  and on the rejected answers (how far the policy moved, what DPO's KL term holds back).
- answer length (`win_rate.ddpo_answer_tokens`, `dsft_answer_tokens`): the mean tokens of the answers
  the win rate judged.

A variant of a sweep (`rlaif evaluate RUN --variant NAME`): the same for `<run>/dpo/<NAME>`, written to
`<run>/eval/variants/<NAME>/`; evaluation/sweep_report.py puts the variants side by side.

Plots: the dDPO training curves (loss, rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies) and the dSFT loss, from the trainers' `trainer_state.json` log history.
Assumes: a run directory written by `rlaif run` or `rlaif train` (recipe.json, dataset/, sft/, dpo/).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
KEPT = ("mt_bench", "variants", "variants.md", "variants.json")  # in <run>/eval: what a plain evaluate leaves
CURVES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


Scores = tuple[list[float], list[float], list[int], list[int]]  # logp chosen, rejected; their token counts


def answer_logps(model_dir: str, rows: list[dict]) -> Scores:
    """log pi(chosen|x) and log pi(rejected|x) for each preference row, summed over answer tokens,
    and the answers' token counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gpu = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if gpu else torch.float32)
    model.to("cuda" if gpu else "cpu").eval()

    def logp(prompt: list[dict], answer: list[dict]) -> tuple[float, int]:
        head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(prompt + answer, tokenize=False)
        n_head = len(tok(head, add_special_tokens=False).input_ids)
        ids = torch.tensor([tok(full, add_special_tokens=False).input_ids], device=model.device)
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        token_logps = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        answer = token_logps[n_head - 1:]  # the answer's tokens only
        return float(answer.sum()), int(answer.numel())

    chosen = [logp(r["prompt"], r["chosen"]) for r in rows]
    rejected = [logp(r["prompt"], r["rejected"]) for r in rows]
    del model
    return [c[0] for c in chosen], [r[0] for r in rejected], [c[1] for c in chosen], [r[1] for r in rejected]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def preference_metrics(dpo: Scores, sft: Scores, beta: float) -> dict[str, Any]:
    """The metrics of the module docstring from the two models' answer log-probs."""
    def pref(c: list[float], r: list[float]) -> dict[str, float]:
        diff = [a - b for a, b in zip(c, r)]
        return {"accuracy": _mean([1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diff]), "margin": _mean(diff)}

    def per_token(s: Scores) -> dict[str, float]:
        return pref([a / max(n, 1) for a, n in zip(s[0], s[2])], [b / max(n, 1) for b, n in zip(s[1], s[3])])

    r_c = [beta * (a - b) for a, b in zip(dpo[0], sft[0])]
    r_r = [beta * (a - b) for a, b in zip(dpo[1], sft[1])]
    prefs = {"dsft": pref(sft[0], sft[1]), "ddpo": pref(dpo[0], dpo[1])}
    per_tok = {"dsft": per_token(sft), "ddpo": per_token(dpo)}
    return {
        "pairs": len(r_c), "beta": beta,
        "dpo_implicit_reward": {**pref(r_c, r_r), "chosen": _mean(r_c), "rejected": _mean(r_r)},
        "dsft_implicit_reward": {"accuracy": 0.5, "margin": 0.0, "chosen": 0.0, "rejected": 0.0},
        "preference": prefs,
        "preference_per_token": per_tok,
        "gain": {k: prefs["ddpo"][k] - prefs["dsft"][k] for k in ("accuracy", "margin")},
        "gain_per_token": {k: per_tok["ddpo"][k] - per_tok["dsft"][k] for k in ("accuracy", "margin")},
        "drift": {"chosen": _mean([a - b for a, b in zip(dpo[0], sft[0])]),
                  "rejected": _mean([a - b for a, b in zip(dpo[1], sft[1])])},
    }


def plot_curves(run: Path, out: Path, dpo: str = "dpo") -> list[str]:
    """One PNG per training curve found in the stages' trainer_state.json; returns the files.
    `dpo`: the dDPO folder in the run (a variant's: dpo/<name>)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stage, folder, keys in (("dpo", dpo, CURVES), ("sft", "sft", ("loss",))):
        state = run / folder / "trainer_state.json"
        if not state.exists():
            continue
        history = json.loads(state.read_text())["log_history"]
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h]
            if not points:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.plot(*zip(*points), marker="o", markersize=3)
            ax.set(title=f"d{stage.upper()}: {key}", xlabel="step", ylabel=key)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out / f"{stage}_{key.replace('/', '_')}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(str(path))
    return written


def trained_beta(dpo_dir: Path) -> float:
    """The beta the dDPO model in `dpo_dir` was trained with, as its stage state records it; a model
    trained before the state recorded it gets TRL's default, with a warning."""
    from rlaif.training.common import STATE, stage_state
    from rlaif.training.dpo import DPOSpec

    beta = (stage_state(dpo_dir) or {}).get("beta")
    if beta is None:
        beta = DPOSpec.DEFAULTS["beta"]
        log.warning("%s records no beta (trained before it was recorded): the implicit reward uses %s; "
                    "train the stage again to record the one it used", dpo_dir / STATE, beta)
    return float(beta)


def evaluate_run(run_dir: str | Path, judge: Any = None, ctx: Any = None, max_tokens: int = 256,
                 win_rate: bool = True, variant: str | None = None, sft_scores: Scores | None = None) -> dict[str, Any]:
    """Compute, write and return the run's evaluation (see the module docstring). `judge` (a
    JudgeSpec) decides the win rate, on the engines of `ctx` (a RunContext: its pool, the recipe's
    engine settings and seed; default: a pool of its own); the implicit reward uses the beta dDPO
    trained with; `max_tokens` the answers' length; `variant` a sweep's variant instead of
    <run>/dpo; `sft_scores` the dSFT model's `answer_logps` on test_prefs, when already computed."""
    from rlaif.core.errors import ConfigError
    from rlaif.runners.context import RunContext
    from rlaif.training.common import load_splits, stage_state

    ctx = ctx or RunContext()
    run = Path(run_dir)
    dpo_dir = run / "dpo" / variant if variant else run / "dpo"
    if not (dpo_dir / "config.json").exists():
        hint = (f"; this run's dDPO is a sweep: `rlaif evaluate {run} --variant NAME` (NAME one of "
                f"{sorted(p.parent.name for p in (run / 'dpo').glob('*/config.json'))})") if not variant and any(
            (run / "dpo").glob("*/config.json")) else ""
        raise ConfigError(f"{dpo_dir}: no dDPO model; run `rlaif train dpo` first{hint}")
    sft_dir = (stage_state(dpo_dir) or {}).get("start_model") or str(run / "sft")
    beta = trained_beta(dpo_dir)
    test = load_splits(run / "dataset")["test_prefs"]
    if len(test) == 0:
        raise ConfigError(f"{run / 'dataset'}: test_prefs is empty; nothing to evaluate on")
    rows = test.select_columns(["prompt_id", "prompt", "chosen", "rejected"]).to_list()

    out = run / "eval" / "variants" / variant if variant else run / "eval"
    for old in out.iterdir() if out.exists() else ():  # the models may have been retrained in place: nothing
        if old.name not in KEPT:  # old is reused (MT-Bench keys its shards on the models' files; variants apart)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    metrics: dict[str, Any] = {"dpo_model": str(dpo_dir), "sft_model": sft_dir}
    sft_scores = sft_scores or answer_logps(sft_dir, rows)
    metrics.update(preference_metrics(answer_logps(str(dpo_dir), rows), sft_scores, beta))
    if win_rate and judge is not None:
        from rlaif.engines.pool import free_accelerator

        free_accelerator()  # the HF models' memory back before vLLM measures what it may take
        metrics["win_rate"] = judged_win_rate(run, judge, rows, (str(dpo_dir), sft_dir), max_tokens, ctx, out)
    metrics["plots"] = plot_curves(run, out / "plots", str(dpo_dir.relative_to(run)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def judged_win_rate(run: Path, judge: Any, rows: list[dict], models: tuple[str, str], max_tokens: int, ctx: Any,
                    out: Path | None = None) -> dict[str, Any]:
    """Both models (dDPO's and dSFT's folders) answer the test prompts; the judge compares each pair
    (dDPO = a, dSFT = b), on the engines of `ctx`.

    Answers and verdicts are kept under `out` (default `<run>/eval/`: completions/, comparisons/<judge>/).
    """
    from rlaif.core.records import Completion, Message, Prompt
    from rlaif.core.store import RunStore
    from rlaif.engines.base import Sampling
    from rlaif.engines.pool import EnginePool
    from rlaif.generation.ensemble import GeneratorSpec
    from rlaif.generation.stage import generate
    from rlaif.judges.stage import compare_pairs
    from rlaif.prompts.prompt_sets import write_prompt_chunks

    dpo_dir, sft_dir = models
    engine, seed = ctx.engine, ctx.seed
    store = RunStore(out or run / "eval")
    prompts = list({r["prompt_id"]: Prompt(prompt_id=r["prompt_id"], source="test_prefs",
                                           messages=[Message(**m) for m in r["prompt"]]) for r in rows}.values())
    greedy = Sampling(temperature=0.0, max_tokens=max_tokens, seed=seed)
    members = [GeneratorSpec(name="ddpo", model=dpo_dir, sampling=greedy),
               GeneratorSpec(name="dsft", model=sft_dir, sampling=greedy)]
    from contextlib import nullcontext
    from dataclasses import replace

    with nullcontext(ctx.pool) if ctx.pool is not None else EnginePool(seed=seed) as pool:
        chunks = write_prompt_chunks(prompts, store, len(prompts))
        answers = list(store.read_manifest(generate(chunks, members, store, pool, engine, seed=seed), Completion))
        by = {(c.model, c.prompt_id): c for c in answers if c.ok}
        pairs = [(by["ddpo", p.prompt_id], by["dsft", p.prompt_id]) for p in prompts
                 if ("ddpo", p.prompt_id) in by and ("dsft", p.prompt_id) in by]
        verdicts = compare_pairs(prompts, pairs, judge, store, replace(ctx, pool=pool))
    parsed = [v for v in verdicts if v.status == "parsed"]
    wins, losses = sum(v.winner == "a" for v in parsed), sum(v.winner == "b" for v in parsed)
    ties = len(parsed) - wins - losses
    return {"judge": judge.name, "judge_kind": judge.kind, "prompts": len(prompts), "pairs": len(pairs),
            "judged": len(parsed), "unjudged": len(verdicts) - len(parsed),
            "ddpo_wins": wins, "dsft_wins": losses, "ties": ties,
            "order_changed_verdict": sum(v.order_changed_verdict for v in parsed),
            "ddpo_win_rate": (wins + ties / 2) / len(parsed) if parsed else None,
            "ddpo_answer_tokens": _mean([a.output_tokens for a, _ in pairs]),
            "dsft_answer_tokens": _mean([b.output_tokens for _, b in pairs])}
