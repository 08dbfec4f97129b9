"""Faults on real parts: a real HTTP server on 127.0.0.1 that refuses, 401s, 400s, 503s and drops
connections, then recovers; two runs on one directory; a read-only directory; a file size limit
that fills up mid-run; user mistakes. Every case ends in one error line with a non-zero exit code
(the exit codes of rlaif/core/errors.py), or in a complete run; a rerun after the fix sends only
what had not been done.

Most cases call the command line in this process (`main`, on Prefect's test server); those that
must see a real process's output, exit status, limits or lock run `python -m rlaif` as a child.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal

import pytest
import yaml
from datasets import load_from_disk

from tests.support.faulty import Faulty, error_lines, prefect_env, recipe, rlaif, sent, stamps, url, wait_for  # noqa: F401 - url: a fixture
from rlaif.cli.main import main


def run(path, out, *extra) -> list[str]:
    return ["run", str(path), "--out", str(out), *extra]


def pairs(out) -> int:
    ds = load_from_disk(str(out / "dataset"))
    return ds["train_prefs"].num_rows + ds["test_prefs"].num_rows


# ----------------------------------------------------------------------------- errors no retry fixes
def test_a_401_stops_the_stage_at_the_first_request_and_the_rerun_after_the_fix_completes(url, tmp_path):
    Faulty.gen = 401
    path, out, env = recipe(tmp_path, url), tmp_path / "run", prefect_env(tmp_path)
    done = rlaif(*run(path, out), env=env)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr  # Prefect's tracebacks went to the log only
    (line,) = error_lines(done.stderr)
    assert f"{url} refused a request for model gen-a: HTTP 401: Incorrect API key provided" in line
    assert f"(log: {out / 'logs'}" in line and "Traceback" in next((out / "logs").glob("*-run.log")).read_text()
    assert len(sent("gen")) == 1  # one request in flight at a time: the first refusal stopped the stage
    assert not list(out.glob("completions/shard-*.jsonl"))  # no row written as final: the rerun sends it

    Faulty.gen = "ok"
    assert main(run(path, out)) == 0
    assert pairs(out) == 4


def test_a_400_stops_the_stage_with_the_servers_message_keeping_the_shards_before_it(url, tmp_path, capsys):
    Faulty.gen, Faulty.only = 400, "Say three."
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 3
    (line,) = error_lines(capsys.readouterr().err)
    assert "HTTP 400: prompt is malformed" in line and "stage 'generate'" in line
    kept = stamps(out, "completions/shard-*.jsonl")
    assert len(kept) == 2  # gen-a's answers to the two prompts before it, one chunk each

    Faulty.gen, Faulty.seen = "ok", []
    assert main(run(path, out)) == 0
    assert ("gen", "gen-a", "Say one.") not in Faulty.seen and len(sent("gen")) == 6
    assert {k: v for k, v in stamps(out, "completions/shard-*.jsonl").items() if k in kept} == kept


# ----------------------------------------------------------------------------- failed rows: the exit status
def test_a_run_where_every_request_fails_stops_with_a_table_and_recovers(url, tmp_path, capsys):
    Faulty.gen = 503
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 4
    err = capsys.readouterr().err
    assert "failed rows" in err and all(f"p{i}" in err for i in range(4)) and "upstream overloaded" in err
    (line,) = error_lines(err)
    assert "stage 'generate': 8 rows, none usable; the run stops here" in line
    assert not (out / "versions").exists() and not (out / "dataset").exists()  # nothing empty published

    Faulty.gen, Faulty.seen = "ok", []
    assert main(run(path, out)) == 0
    assert len(sent("gen")) == 8 and pairs(out) == 4


def test_failed_rows_fail_the_run_after_everything_else_and_a_rerun_sends_only_them(url, tmp_path, capsys):
    Faulty.gen, Faulty.only = 503, "Say three."
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 4
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert line.startswith("error: 2 rows failed (generate 2), more than flow.max_failed_rows (0)")
    assert "a rerun sends the 2 transient ones again" in line
    assert "gen-a" in err and "gen-b" in err and "p2" in err  # the table
    assert pairs(out) == 3  # everything that succeeded went on: judged, binarized, published
    assert (out / "dataset").resolve().name == "0001"

    assert main(run(path, out, "--set", "flow.max_failed_rows=2")) == 0  # within what the recipe allows

    Faulty.gen, Faulty.seen = "ok", []
    assert main(run(path, out)) == 0
    assert sorted(sent("gen")) == ["Say three.", "Say three."]  # only the rows that failed
    assert pairs(out) == 4 and (out / "dataset").resolve().name == "0002"


def test_a_judge_whose_connections_drop_fails_its_rows_which_the_next_run_judges(url, tmp_path, capsys):
    Faulty.judge, Faulty.only = "drop", "Say two."
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 4
    err = capsys.readouterr().err
    assert "p1 (gen-a)" in err and "p1 (gen-b)" in err and "APIConnectionError" in err
    (line,) = error_lines(err)
    assert "2 rows failed (judge 2)" in line

    Faulty.judge, Faulty.seen = "ok", []
    assert main(run(path, out)) == 0
    assert sent("gen") == [] and len(sent("judge")) == 2 and pairs(out) == 4



def test_completions_made_again_after_failing_are_judged_again_alone(url, tmp_path, capsys):
    """Two completions of a chunk of eight fail; the rerun makes them and judges those two, not the
    chunk (its judge shard is kept by its completions' shard keys, each verdict by its completion)."""
    Faulty.gen, Faulty.only = 503, "Say three."
    path, out = recipe(tmp_path, url, shard_size=4), tmp_path / "run"
    assert main(run(path, out)) == 4  # two failed rows, kept for the rerun
    assert len(sent("judge")) == 6
    Faulty.gen, Faulty.seen = "ok", []
    assert main(run(path, out)) == 0
    assert sorted(sent("gen")) == ["Say three.", "Say three."]
    assert len(sent("judge")) == 2  # was 8: the whole chunk
    assert pairs(out) == 4

# ----------------------------------------------------------------------------- the run directory
def test_a_second_run_on_the_same_dir_fails_naming_the_first_and_nothing_is_done_twice(url, tmp_path, capsys):
    Faulty.hold = ("gen", "Say two.")
    path, out, env = recipe(tmp_path, url), tmp_path / "run", prefect_env(tmp_path)
    first = rlaif(*run(path, out), env=env, wait=False)
    try:
        wait_for(lambda: "Say two." in sent("gen"), first)
        assert main(run(path, out)) == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert f"{out} is in use by another rlaif process (pid {first.pid})" in line
        Faulty.release.set()
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err[-3000:]
    requests = [(kind, model, text) for kind, model, text in Faulty.seen]
    assert len(requests) == len(set(requests)) == 8 + 8  # every answer and every judgement once


def drop_root_powers():
    """In the child: as root, give up the powers that ignore file modes, so 0o555 means read-only
    (a no-op for other users). Dropped from the bounding set, they stay gone across exec."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_run_dir_is_one_line_before_anything_is_sent(url, tmp_path):
    path, out = recipe(tmp_path, url), tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    env = {**prefect_env(tmp_path), "RLAIF_HOME": str(tmp_path / "home")}  # where the log goes instead
    try:
        done = rlaif(*run(path, out), env=env, preexec_fn=drop_root_powers)
    finally:
        out.chmod(0o755)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert f"cannot write the run directory {out}: " in line and "Permission denied" in line
    assert str(tmp_path / "home" / "logs") in line
    assert Faulty.seen == [] and list(out.iterdir()) == []


def file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_that_fills_up_mid_run_stops_with_one_line_and_a_rerun_resumes(url, tmp_path):
    Faulty.pad = ("Say three.", 400_000)  # gen-a's shard for that prompt outgrows the limit
    path, out, env = recipe(tmp_path, url), tmp_path / "run", prefect_env(tmp_path)
    done = rlaif(*run(path, out), env=env, preexec_fn=file_size_limit(256_000))
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "stage 'generate'" in line and "File too large" in line and "a rerun resumes" in line
    assert str(out / "completions") in line  # the file it could not write
    kept = stamps(out, "completions/shard-*.jsonl")
    assert len(kept) == 2 and not list(out.rglob("*.tmp"))  # whole shards only, no temp file left
    for p in out.glob("completions/shard-*.jsonl"):
        assert all(json.loads(row)["text"] for row in p.read_text().splitlines())

    Faulty.seen = []
    assert main(run(path, out)) == 0
    assert len(sent("gen")) == 6 and pairs(out) == 4
    assert {k: v for k, v in stamps(out, "completions/shard-*.jsonl").items() if k in kept} == kept


# ----------------------------------------------------------------------------- user mistakes: one line each
def bad_recipe(tmp_path, url):
    (tmp_path / "recipe-dir").mkdir()
    (tmp_path / "broken.yaml").write_text("name: x\ngenerators: [\n")
    (tmp_path / "judge.yaml").write_text("judge: {name: other, model: judge, kind: nope}\n")
    return recipe(tmp_path, url)


@pytest.mark.parametrize("args, problem", [
    (lambda t, p: ["run", str(t / "recipe-dir")], "is a directory; give the recipe's YAML file"),
    (lambda t, p: ["run", str(t / "missing.yaml")], "recipe not found"),
    (lambda t, p: ["run", str(t / "broken.yaml")], "line 3: not valid YAML"),
    (lambda t, p: ["run", str(p), "--set", "generators.9.model=x"], "'generators.9.model' is not a field path"),
    (lambda t, p: ["run", str(p), "--set", "flow.max_failed_rows=-1"], "field 'flow.max_failed_rows'"),
    (lambda t, p: ["run", str(p), "--out", str(t / "run"), "--judge", str(t / "judge.yaml")], "unknown judge kind 'nope'"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(url, tmp_path, capsys, args, problem):
    path = bad_recipe(tmp_path, url)
    assert main(args(tmp_path, path)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert problem in line
    assert Faulty.seen == []


def test_the_recipe_a_run_used_is_written_whole(url, tmp_path):
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 0
    assert yaml.safe_load((out / "recipe.json").read_text())["name"] == "faults"
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".incoming-*"))
    assert oct((out / "versions" / "0001").stat().st_mode & 0o777) == oct(0o777 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
