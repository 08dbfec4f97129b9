"""Faults benchmark, second part: damaged shards, recipes that try to run code, the words of failures.

Each case is one small function: it runs `python -m rlaif` as a child (as a user would) against the
strict local OpenAI stand-in (rlaif/rehearsal/openai_server.py) and returns one row:

    case, exit (the child's exit code), expected (the documented one), seconds (to exit),
    rows_lost (rows missing from the published dataset), rows_paid_twice (requests sent again for
    rows that had already been answered), ok (exit as documented, nothing lost or paid twice, and
    the case's own check)

    python bench/faults_b.py [--only NAME ...]

The cases are meant to join bench/faults.py's table (`CASES` lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlaif.rehearsal.fault_cases import recipe_file  # noqa: E402
from rlaif.rehearsal.openai_server import OpenAIServer  # noqa: E402

KEY_ENV = "BENCH_FAULTS_KEY"
PROMPTS = ["Say one.", "Say two.", "Say three.", "Say four."]
CHAT = "/v1/chat/completions"


def rlaif(tmp: Path, *args: str) -> tuple[int, float, str]:
    """`python -m rlaif ARGS` in its own homes: (exit code, seconds, stderr)."""
    env = {**os.environ, KEY_ENV: "sk-bench", "RLAIF_HOME": str(tmp / "home"), "PREFECT_HOME": str(tmp / "prefect"),
           "COLUMNS": "200"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rlaif", *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)
    return done.returncode, round(time.perf_counter() - start, 1), done.stderr


def recipe(tmp: Path, srv: OpenAIServer, **fields) -> Path:
    """Two hosted members and a hosted judge over four prompts (one chunk)."""
    source = tmp / "prompts.jsonl"
    if not source.exists():
        source.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(PROMPTS)))
    endpoint = {"base_url": srv.base_url, "api_key_env": KEY_ENV, "max_retries": 0, "max_concurrency": 1}
    data = {"name": "faults", "shard_size": 4, "prompts": {"source": str(source)},
            "hygiene": {"near_dup_threshold": None},
            "generators": [{"name": "a", "model": "gpt-4o-mini", "endpoint": endpoint, "sampling": {"max_tokens": 8}},
                           {"name": "b", "model": "gpt-4.1-mini", "endpoint": endpoint, "sampling": {"max_tokens": 8}}],
            "judge": {"name": "uf", "model": "gpt-4o", "aspects": ["helpfulness"], "endpoint": endpoint},
            "binarize": {"test_fraction": 0},
            "flow": {"retries": 0, "retry_delay_seconds": 0, "retry_jitter_factor": 0}}
    return recipe_file(tmp, data, fields)


def row(case: str, code: int, expected: int, seconds: float, lost: int = 0, twice: int = 0, check: bool = True) -> dict:
    return {"case": case, "exit": code, "expected": expected, "seconds": seconds, "rows_lost": lost,
            "rows_paid_twice": twice, "ok": code == expected and lost == 0 and twice == 0 and check}


def sent(srv: OpenAIServer) -> int:
    return srv.count(CHAT, 200)


def counts(run: Path) -> dict:
    return json.loads((run / "dataset" / "manifest.json").read_text())["counts"]


# ----------------------------------------------------------------------------- damaged shards (item 2)
def damaged_completion_shard(tmp: Path, srv: OpenAIServer) -> dict:
    """A completion shard that lost its last line: made again, every prompt published."""
    path, run = recipe(tmp, srv), tmp / "run"
    rlaif(tmp, "run", str(path), "--out", str(run))
    shard = next(p for p in run.glob("completions/shard-*.jsonl") if '"model":"a"' in p.read_text())
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:3]))
    before = sent(srv)
    code, seconds, err = rlaif(tmp, "run", str(path), "--out", str(run))
    c = counts(run) if code == 0 else {"completions": {"total": 0}}
    lost = 8 - c["completions"]["total"]
    return row("damaged completion shard (last line lost)", code, 0, seconds, lost, max(sent(srv) - before - 1, 0),
               "was damaged" in err)


def emptied_judgement_shard(tmp: Path, srv: OpenAIServer) -> dict:
    path, run = recipe(tmp, srv), tmp / "run"
    rlaif(tmp, "run", str(path), "--out", str(run))
    next(run.glob("judgements/uf/shard-*.jsonl")).write_bytes(b"")
    before = sent(srv)
    code, seconds, err = rlaif(tmp, "run", str(path), "--out", str(run))
    c = counts(run) if code == 0 else {"judgements": {"total": 0}}
    return row("emptied judgement shard", code, 0, seconds, 8 - c["judgements"]["total"],
               max(sent(srv) - before - 8, 0), "was damaged" in err)


def deleted_version_manifest(tmp: Path, srv: OpenAIServer) -> dict:
    path, run = recipe(tmp, srv), tmp / "run"
    rlaif(tmp, "run", str(path), "--out", str(run))
    (run / "versions" / "0001" / "manifest.json").unlink()
    before = sent(srv)
    code, seconds, _ = rlaif(tmp, "run", str(path), "--out", str(run))
    lost = 4 - counts(run)["pairs"] if code == 0 else 4
    return row("deleted version manifest.json", code, 0, seconds, lost, sent(srv) - before)


# ----------------------------------------------------------------------------- recipes that run code (item 6)
EVIL = "{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}{{ prompt }}{{ completion }}"


def template_path_traversal(tmp: Path, srv: OpenAIServer) -> dict:
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "evil.v1.jinja").write_text(EVIL % (tmp / "PWNED"))
    path = recipe(tmp, srv, judge__template="../" * 12 + str(tmp / "elsewhere" / "evil").lstrip("/"))
    code, seconds, err = rlaif(tmp, "run", str(path), "--dry-run")
    return row("template ../ path (--dry-run)", code, 2, seconds,
               check=not (tmp / "PWNED").exists() and "field 'judges.0.template'" in err)


def template_outside_sandbox(tmp: Path, srv: OpenAIServer) -> dict:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "evil.v1.jinja").write_text(EVIL % (tmp / "PWNED"))
    path = recipe(tmp, srv, templates_dir="mine", judge__template="evil")
    code, seconds, err = rlaif(tmp, "run", str(path), "--dry-run")
    return row("template reads os (--dry-run)", code, 2, seconds, check=not (tmp / "PWNED").exists() and "sandbox" in err)


def engine_extra_model(tmp: Path, srv: OpenAIServer) -> dict:
    path = recipe(tmp, srv, engine={"extra": {"model": "/elsewhere", "trust_remote_code": True}})
    code, seconds, err = rlaif(tmp, "run", str(path), "--out", str(tmp / "run"))
    return row("engine.extra sets model / trust_remote_code", code, 2, seconds, check="field 'engine.extra'" in err)


def name_outside_runs(tmp: Path, srv: OpenAIServer) -> dict:
    path = recipe(tmp, srv, name="../../x")
    code, seconds, err = rlaif(tmp, "run", str(path))
    return row("name: ../../x", code, 2, seconds, check="field 'name'" in err and not (tmp.parent / "x").exists())


# ----------------------------------------------------------------------------- words (item 8)
def refusal_names_member_and_row(tmp: Path, srv: OpenAIServer) -> dict:
    srv.fault = lambda p, body: "insufficient_quota" if body.get("model") == "gpt-4o-mini" and "three" in json.dumps(body) else None
    try:
        code, seconds, err = rlaif(tmp, "run", str(recipe(tmp, srv)), "--out", str(tmp / "run"))
    finally:
        srv.fault = None
    return row("refusal names member and row", code, 3, seconds, check="model a, row p2:" in err)


def lone_surrogate(tmp: Path, srv: OpenAIServer) -> dict:
    (tmp / "prompts.jsonl").write_text('{"prompt_id": "p0", "prompt": "Say \\ud800 one."}\n')
    before = len(srv.requests)
    code, seconds, err = rlaif(tmp, "run", str(recipe(tmp, srv)), "--out", str(tmp / "run"))
    return row("prompt with a lone surrogate", code, 2, seconds,
               check="line 1, field 'prompt'" in err and sent(srv) == 0 and len(srv.requests) >= before)


def prompt_id_false(tmp: Path, srv: OpenAIServer) -> dict:
    (tmp / "prompts.jsonl").write_text('{"prompt_id": false, "prompt": "Say one."}\n')
    code, seconds, err = rlaif(tmp, "run", str(recipe(tmp, srv)), "--out", str(tmp / "run"))
    return row("prompt_id: false", code, 2, seconds, check="line 1, field 'prompt_id'" in err)


CASES: list[Callable[[Path, OpenAIServer], dict]] = [
    damaged_completion_shard, emptied_judgement_shard, deleted_version_manifest, template_path_traversal,
    template_outside_sandbox, engine_extra_model, name_outside_runs, refusal_names_member_and_row, lone_surrogate,
    prompt_id_false]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case function names")
    args = parser.parse_args()
    rows = []
    for case in CASES:
        if args.only and case.__name__ not in args.only:
            continue
        with tempfile.TemporaryDirectory() as d, OpenAIServer(api_key="sk-bench") as srv:
            tmp = Path(d) / "case"  # one level down: a `name: ../../x` escape would land in d
            tmp.mkdir()
            rows.append(case(tmp, srv))
        print(json.dumps(rows[-1]), flush=True)
    width = max(len(r["case"]) for r in rows)
    print(f"\n{'case':<{width}}  exit  expected  seconds  rows lost  rows paid twice  ok")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['exit']:>4}  {r['expected']:>8}  {r['seconds']:>7}  {r['rows_lost']:>9}  "
              f"{r['rows_paid_twice']:>15}  {'yes' if r['ok'] else 'NO'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
