"""What the pipeline survives: each fault as one small function that causes it for real and measures
the outcome. The tests in tests/faults/ assert on them; `bench/faults.py` prints them as a table.

    @case("name", expect=EXIT)                 one fault; returns an Outcome
    def name(tmp: Path) -> Outcome: ...

An Outcome is what a user would see and pay: the exit code, the seconds from the fault (the signal,
the start of the run) to the exit, the rows lost (expected rows missing once the case's rerun, if
any, is done) and the rows paid twice (a request the server answered usefully more than once,
requests in flight at a kill aside). Cases talk to the strict local OpenAI server
(rlaif/rehearsal/openai_server/) over real HTTP and run `python -m rlaif` as a real child process,
on Prefect's server of the session (`PREFECT_API_URL`) unless the case is about Prefect's temporary
one. Adding a case: one decorated function.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlaif.rehearsal.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]  # the source tree: where the children run `python -m rlaif`
KEY = "sk-fault-key-0123456789abcdef"
GENERATORS = ("gpt-4o-mini", "gpt-4.1-mini")  # the first is rated 5, the second 3: one pair per prompt
JUDGE = "gpt-4o"
PROMPTS = ["Say one.", "Say two.", "Say three.", "Say four."]


@dataclass
class Outcome:
    case: str
    expect: int  # the documented exit code
    exit_code: int
    seconds: float
    lost: int = 0
    paid_twice: int = 0
    stderr: str = ""
    notes: dict = field(default_factory=dict)  # what a test checks beyond the table


CASES: dict[str, tuple[int, Callable[[Path], Outcome]]] = {}


def case(name: str, expect: int):
    def add(fn):
        CASES[name] = (expect, fn)
        fn.case, fn.expect = name, expect
        return fn

    return add


# ----------------------------------------------------------------------------- the parts
def answer(body: dict) -> str:
    """Generation answers "<prompt> from <model>"; the judge rates the first generator 5, others 3."""
    text = body["messages"][-1]["content"]
    if "response_format" in body:
        return '{"rating": %d, "rationale": "fine"}' % (5 if f"from {GENERATORS[0]}" in text else 3)
    return f"{text} from {body['model']}"


def server(**kw) -> OpenAIServer:
    return OpenAIServer(**{"api_key": KEY, "responder": answer, **kw})


def write_recipe(tmp: Path, srv: OpenAIServer, batch: bool = False, retries: int = 2, **extra) -> Path:
    """Two members and a judge on the local server, one prompt per shard, no Prefect retries."""
    source = tmp / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(PROMPTS)))
    endpoint = {"base_url": srv.base_url, "api_key_env": "FAULT_KEY", "provider": "openai", "max_retries": retries,
                "max_concurrency": 2}
    data = {"name": "faults", "shard_size": 1, "prompts": {"source": str(source)},
            "hygiene": {"near_dup_threshold": None},
            "generators": [{"name": m, "model": m, "endpoint": endpoint, "sampling": {"max_tokens": 24}}
                           for m in GENERATORS],
            "judge": {"name": "uf", "model": JUDGE, "aspects": ["helpfulness"], "mode": "per_completion",
                      "endpoint": {**endpoint, **({"batch": True, "batch_poll_s": 0.1} if batch else {})}},
            "binarize": {"test_fraction": 0},
            "flow": {"retries": 0, "retry_delay_seconds": 0, "retry_jitter_factor": 0}}
    return recipe_file(tmp, data, extra)


def recipe_file(tmp: Path, data: dict, fields: dict) -> Path:
    """`data` with each `a__b=value` of `fields` set (`a: {b: value}`), written as `tmp/recipe.yaml`."""
    for dotted, value in fields.items():
        node = data
        *path, last = dotted.split("__")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    out = tmp / "recipe.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def env(tmp: Path, temporary_server: bool = False) -> dict:
    """A child's environment: the key, its own homes, and Prefect's server of this session, or none
    (`temporary_server`: the child starts Prefect's temporary server, as a user's first command does)."""
    e = {**os.environ, "FAULT_KEY": KEY, "PREFECT_HOME": str(tmp / "prefect-child"), "RLAIF_HOME": str(tmp / "home"),
         "RLAIF_USE_SERVER": "0", "COLUMNS": "200"}
    if temporary_server:
        e.pop("PREFECT_API_URL", None)
    else:
        from prefect.settings import PREFECT_API_URL

        e["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return e


def rlaif(args: list[str], env: dict, wait: bool = True, preexec_fn=None, timeout: float = 300):
    """`python -m rlaif ARGS` in a session of its own, as a terminal would start it (its process group)."""
    cmd = [sys.executable, "-m", "rlaif", *args]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True, preexec_fn=preexec_fn)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def run_args(recipe: Path, out: Path) -> list[str]:
    return ["run", str(recipe), "--out", str(out)]


def descendants(root: int) -> set[int]:
    """Every live process below `root` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    found, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(what, proc=None, timeout: float = 300, step: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not what():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) first:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(step)


def answered(srv: OpenAIServer, faulted: Counter | None = None) -> Counter:
    """(model, last message) of each inference request the server answered with 200, less the ones a
    fault spoiled (a spoiled 200 is no answer: asking again is not paying twice)."""
    got = Counter((r["body"]["model"], r["body"]["messages"][-1]["content"]) for r in srv.requests
                  if r["path"].endswith("/chat/completions") and r["status"] == 200)
    return got - (faulted or Counter())


def twice(counts: Counter, in_flight: int = 0) -> int:
    """Requests answered more than once, less the `in_flight` ones a fault caught mid-way."""
    return max(sum(n - 1 for n in counts.values() if n > 1) - in_flight, 0)


def lost(out: Path) -> int:
    """Rows missing from a finished run: every prompt by every member, every completion judged."""
    want = len(PROMPTS) * len(GENERATORS)
    ok = sum(1 for p in out.glob("completions/shard-*.jsonl") for line in p.read_text().splitlines()
             if json.loads(line).get("text"))
    judged = sum(1 for p in out.glob("judgements/uf/shard-*.jsonl") for line in p.read_text().splitlines()
                 if json.loads(line).get("status") == "parsed")
    return max(want - ok, 0) + max(want - judged, 0)


def log_text(tmp: Path, out: Path) -> str:
    return "".join(p.read_text(errors="replace") for d in (out / "logs", tmp / "home" / "logs") if d.exists()
                   for p in d.iterdir())


# ----------------------------------------------------------------------------- 1. signals
def holding() -> tuple[threading.Event, Callable]:
    """A server fault that holds the request for the third prompt until the event is set (the run is
    then mid-stage); `hold.held` says whether one came."""
    release = threading.Event()

    def hold(path, body):
        if body and "messages" in body and PROMPTS[2] in body["messages"][-1]["content"] and not release.is_set():
            hold.held = True
            release.wait(60)
        return None

    hold.held = False
    return release, hold


def kill_all(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _interrupt(tmp: Path, sig: int, name: str) -> Outcome:
    """`rlaif run` on Prefect's temporary server, held on a request; `sig` to its whole process group
    (as Ctrl-C in a terminal); then the rerun."""
    release, hold = holding()
    with server(fault=hold) as srv:
        recipe, out = write_recipe(tmp, srv), tmp / "run"
        proc = rlaif(run_args(recipe, out), env(tmp, temporary_server=True), wait=False)
        try:
            wait_until(lambda: hold.held, proc, timeout=300)
            below = descendants(proc.pid)
            start = time.time()
            os.killpg(proc.pid, sig)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                err = "(still running after 60 s)"
            seconds = time.time() - start
            time.sleep(1)
            left = sorted(p for p in below | {proc.pid} if alive(p))
        finally:
            release.set()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        code = proc.returncode
        kill_all(left)  # not ours to leave running, even when the case fails
        rerun = rlaif(run_args(recipe, out), env(tmp))
        return Outcome(name, 0, code, seconds, lost(out), twice(answered(srv), in_flight=1),
                       err, {"left": left, "below": sorted(below), "rerun": rerun.returncode,
                             "rerun_stderr": rerun.stderr[-3000:]})


@case("Ctrl-C (SIGINT to the process group), temporary Prefect server", expect=130)
def ctrl_c(tmp: Path) -> Outcome:
    return _interrupt(tmp, signal.SIGINT, ctrl_c.case)


@case("SIGTERM to the process group (a scheduler stops the job)", expect=143)
def sigterm(tmp: Path) -> Outcome:
    return _interrupt(tmp, signal.SIGTERM, sigterm.case)


@case("kill -9 of `rlaif run`: its temporary Prefect server goes too", expect=-9)
def kill_9_orphan(tmp: Path) -> Outcome:
    release, hold = holding()
    with server(fault=hold) as srv:
        recipe, out = write_recipe(tmp, srv), tmp / "run"
        proc = rlaif(run_args(recipe, out), env(tmp, temporary_server=True), wait=False)
        try:
            wait_until(lambda: hold.held, proc, timeout=300)
            below = descendants(proc.pid)
            start = time.time()
            os.kill(proc.pid, signal.SIGKILL)  # the command alone, as `kill -9 PID` does
            proc.wait()
            deadline = time.time() + 15
            while any(alive(p) for p in below) and time.time() < deadline:
                time.sleep(0.1)
            seconds = time.time() - start
            left = sorted(p for p in below if alive(p))
        finally:
            release.set()
        kill_all(left)
        return Outcome(kill_9_orphan.case, -9, proc.returncode, seconds, notes={"left": left, "below": sorted(below)})


# ----------------------------------------------------------------------------- 3. the Batch API path
@case("a judge batch that fails as a whole, then the rerun", expect=3)
def batch_failed_whole(tmp: Path) -> Outcome:
    with server() as srv:
        srv.batch_fail_whole = 1
        recipe, out = write_recipe(tmp, srv, batch=True), tmp / "run"
        start = time.time()
        first = rlaif(run_args(recipe, out), env(tmp))
        seconds = time.time() - start
        rerun = rlaif(run_args(recipe, out), env(tmp))
        secret = KEY in first.stdout + first.stderr + log_text(tmp, out) + prefect_results(tmp, out)
        return Outcome(batch_failed_whole.case, 3, first.returncode, seconds, lost(out),
                       twice(answered(srv)) + twice(srv.processed), first.stderr,
                       {"rerun": rerun.returncode, "rerun_stderr": rerun.stderr[-3000:], "key_shown": secret,
                        "batches": sum(1 for r in srv.requests if r["method"] == "POST" and r["path"] == "/v1/batches")})


@case("a 403 that quotes the key, on the Batch API path", expect=3)
def batch_403_quotes_key(tmp: Path) -> Outcome:
    with server(faults=[("echo_key", 1, "/v1/files")]) as srv:
        recipe, out = write_recipe(tmp, srv, batch=True), tmp / "run"
        start = time.time()
        first = rlaif(run_args(recipe, out), env(tmp))
        seconds = time.time() - start
        rerun = rlaif(run_args(recipe, out), env(tmp))
        shown = first.stdout + first.stderr + log_text(tmp, out) + prefect_results(tmp, out)
        return Outcome(batch_403_quotes_key.case, 3, first.returncode, seconds, lost(out),
                       twice(answered(srv)) + twice(srv.processed), first.stderr,
                       {"rerun": rerun.returncode, "key_shown": KEY in shown, "masked": "***" in first.stderr})


def prefect_results(tmp: Path, out: Path) -> str:
    """What Prefect stored for the child: its result files (in the run and its home)."""
    texts = []
    for d in (out / ".prefect", tmp / "prefect-child"):
        for p in d.rglob("*") if d.exists() else ():
            if p.is_file() and p.stat().st_size < 10_000_000:
                texts.append(p.read_bytes().decode(errors="replace"))
    return "".join(texts)


# ----------------------------------------------------------------------------- 5. malformed replies
def _spoil_once(kind: str, text: str, faulted: Counter):
    """A fault that spoils the first reply to the request holding `text` with `kind`."""
    done = []

    def fault(path, body):
        if not done and body and "messages" in body and text in body["messages"][-1]["content"] \
                and "response_format" not in body:
            done.append(True)
            faulted[(body["model"], body["messages"][-1]["content"])] += 1
            return kind
        return None

    return fault


def _malformed(tmp: Path, kind: str, name: str) -> Outcome:
    faulted: Counter = Counter()
    with server(fault=_spoil_once(kind, PROMPTS[1], faulted)) as srv:
        recipe, out = write_recipe(tmp, srv), tmp / "run"
        start = time.time()
        done = rlaif(run_args(recipe, out), env(tmp))
        return Outcome(name, 0, done.returncode, time.time() - start, lost(out), twice(answered(srv, faulted)),
                       done.stderr, {"faulted": sum(faulted.values())})


@case("a 200 with truncated JSON", expect=0)
def truncated_json(tmp: Path) -> Outcome:
    return _malformed(tmp, "truncated", truncated_json.case)


@case("a 200 with an HTML page", expect=0)
def html_page(tmp: Path) -> Outcome:
    return _malformed(tmp, "html", html_page.case)


@case("a 200 with choices: []", expect=0)
def no_choices(tmp: Path) -> Outcome:
    return _malformed(tmp, "no_choices", no_choices.case)


@case("content: null (a content filter), then the rerun", expect=4)
def content_null(tmp: Path) -> Outcome:
    faulted: Counter = Counter()
    with server(fault=_spoil_once("content_null", PROMPTS[1], faulted)) as srv:
        recipe, out = write_recipe(tmp, srv), tmp / "run"
        start = time.time()
        first = rlaif(run_args(recipe, out), env(tmp))
        seconds = time.time() - start
        rerun = rlaif(run_args(recipe, out), env(tmp))
        got = answered(srv, faulted)
        judged = Counter({k: n for k, n in got.items() if k[0] == JUDGE})
        return Outcome(content_null.case, 4, first.returncode, seconds, lost(out), twice(got), first.stderr,
                       {"rerun": rerun.returncode, "rerun_stderr": rerun.stderr[-3000:],
                        "generated_twice": twice(got - judged), "judged_twice": twice(judged)})


# ----------------------------------------------------------------------------- 7. exit codes that lie
@case("a 429 with Retry-After: soon", expect=0)
def retry_after_soon(tmp: Path) -> Outcome:
    with server(faults=[("retry_after_soon", 1)]) as srv:
        recipe, out = write_recipe(tmp, srv), tmp / "run"
        start = time.time()
        done = rlaif(run_args(recipe, out), env(tmp))
        return Outcome(retry_after_soon.case, 0, done.returncode, time.time() - start, lost(out),
                       twice(answered(srv)), done.stderr)


def read_only(path: Path) -> list[Path]:
    dirs = [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]
    for d in dirs:
        d.chmod(0o555)
    return dirs


def drop_root_powers():
    """In the child: as root, give up the powers that ignore file modes, so 0o555 means read-only."""
    import ctypes

    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@case("a finished run's directory made read-only: run, binarize --force, agreement", expect=2)
def read_only_run_dir(tmp: Path) -> Outcome:
    with server() as srv:
        recipe, out = write_recipe(tmp, srv), tmp / "run"
        first = rlaif(run_args(recipe, out), env(tmp))
        assert first.returncode == 0, first.stderr[-3000:]
        dirs = read_only(out)
        codes, errs, start = {}, {}, time.time()
        try:
            for name, args in (("run", run_args(recipe, out)),
                               ("binarize", ["binarize", str(recipe), "--out", str(out), "--force"]),
                               ("agreement", ["agreement", str(out), "--judges", "uf", "uf"])):
                done = rlaif(args, env(tmp), preexec_fn=drop_root_powers)
                codes[name], errs[name] = done.returncode, done.stdout + done.stderr
        finally:
            for d in dirs:
                d.chmod(0o755)
        worst = max(codes.values(), key=lambda c: c != 2)
        return Outcome(read_only_run_dir.case, 2, worst, time.time() - start, lost(out), twice(answered(srv)),
                       "\n".join(errs.values()), {"codes": codes, "errs": errs})


def file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@case("the disk fills up mid-judging, then the rerun", expect=3)
def disk_full_judging(tmp: Path) -> Outcome:
    def long_verdicts(body: dict) -> str:  # the judge's verdict on one prompt outgrows the limit
        if "response_format" in body and PROMPTS[2] in body["messages"][-1]["content"]:
            return '{"rating": 4, "rationale": "%s"}' % ("x" * 400_000)
        return answer(body)

    with server(responder=long_verdicts) as srv:
        recipe, out = write_recipe(tmp, srv), tmp / "run"
        start = time.time()
        first = rlaif(run_args(recipe, out), env(tmp), preexec_fn=file_size_limit(256_000))
        seconds = time.time() - start
        srv.responder = answer
        rerun = rlaif(run_args(recipe, out), env(tmp))
        return Outcome(disk_full_judging.case, 3, first.returncode, seconds, lost(out), twice(answered(srv), in_flight=2),
                       first.stderr, {"rerun": rerun.returncode, "rerun_stderr": rerun.stderr[-3000:]})
