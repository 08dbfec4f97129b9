"""The run store: whole shards only, metadata that says what a shard holds, hashes that follow
what determines a record, and the lock that keeps two runs off one directory."""

import os
import subprocess
import sys

import pytest

from rlaif.core.records import Completion, Message, Prompt
from rlaif.core.store import RunLocked, RunStore, clean_leftovers, run_lock
from rlaif.engines.base import Sampling
from rlaif.generation.ensemble import GeneratorSpec, assign, member_shard_key
from rlaif.prompts.prompt_sets import write_prompt_chunks
from rlaif.judges.spec import JudgeSpec


def prompts(n: int, text: str = "x") -> list[Prompt]:
    return [Prompt(prompt_id=str(i), messages=[Message(role="user", content=f"{text} {i}")]) for i in range(n)]


def test_hashes_follow_what_determines_a_record(tmp_path):
    base = GeneratorSpec(name="a", model="m", sampling=Sampling(temperature=0.7))
    same = GeneratorSpec(name="a", model="m", sampling=Sampling(temperature=0.7))
    hotter = GeneratorSpec(name="a", model="m", sampling=Sampling(temperature=1.0))
    urial = GeneratorSpec(name="a", model="m", format="urial", sampling=Sampling(temperature=0.7))
    twin = GeneratorSpec(name="b", model="m", sampling=Sampling(temperature=0.7))  # same settings, another member
    assert base.settings_hash() == same.settings_hash()
    assert len({base.settings_hash(), hotter.settings_hash(), urial.settings_hash(), twin.settings_hash()}) == 4
    store = RunStore(tmp_path)
    (p,) = write_prompt_chunks(prompts(1, "hi"), store, 8).shards
    (q,) = write_prompt_chunks(prompts(1, "hi!"), store, 8).shards
    assert member_shard_key(base, p, [base], None, 0) != member_shard_key(base, q, [base], None, 0)
    assert member_shard_key(base, p, [base, twin], None, 0) != member_shard_key(twin, p, [base, twin], None, 0)
    j = JudgeSpec(name="j", model="m")
    assert j.settings_hash() != JudgeSpec(name="j", model="m", aspects=["honesty"]).settings_hash()


def test_store_writes_whole_shards_with_their_metadata(tmp_path):
    store = RunStore(tmp_path)
    recs = [Completion(completion_id=str(i), prompt_id=str(i), prompt_hash="h", model="m", settings_hash="s",
                       text="t" if i else None, error=None if i else "HTTP 503", retryable=not i) for i in range(3)]
    assert store.info("completions", "k", Completion) is None
    info = store.write("completions", "k", recs, group="g", name="m")
    assert (info.rows, info.ok, info.retryable, info.group) == (3, 2, 1, "g")
    assert store.read("completions", "k", Completion) == recs
    assert not [p for p in (tmp_path / "completions").iterdir() if p.name.endswith(".tmp")]
    store.write("completions", "ok", recs[1:], group="g", name="m")
    # a shard that no longer matches its metadata (a hand edit, lost lines) is damaged: made again
    path = store.path("completions", "k")
    path.write_text(path.read_text().splitlines()[1] + "\n")
    assert store.info("completions", "k", Completion) is None
    state = store.state("completions", ["k", "gone", "ok"], Completion)
    assert [s.key for s in state.done] == ["ok"] and state.missing == ["k", "gone"] and not state.complete


TORN_WRITER = """
import builtins, io, os, sys, time
from rlaif.core.records import Message, Prompt
from rlaif.core.store import RunStore

real_open = io.open


class Torn:
    # a file whose first big write stops halfway: what the disk holds when the writer is killed there
    def __init__(self, f):
        self.f = f

    def write(self, data):
        if len(data) < 4096:
            return self.f.write(data)
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        print("torn", flush=True)
        time.sleep(600)  # killed here

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def torn_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Torn(f) if any(m in mode for m in "wax+") else f


builtins.open = io.open = torn_open
prompts = [Prompt(prompt_id=str(i), messages=[Message(role="user", content="a longer prompt " * 20 + str(i))])
           for i in range(40)]
RunStore(sys.argv[1]).write("prompts", "k", prompts)
"""


def test_a_writer_killed_mid_write_leaves_the_whole_old_shard(tmp_path):
    """A writer killed halfway through a shard (its bytes half on disk) leaves the shard as it was
    and nothing that reads as a shard: only a temporary file, which the next run cleans."""
    store = RunStore(tmp_path)
    old = prompts(2)
    store.write("prompts", "k", old)
    writer = subprocess.Popen([sys.executable, "-c", TORN_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "torn"
    finally:
        writer.kill()
        writer.wait()
    assert store.read("prompts", "k", Prompt) == old and store.info("prompts", "k", Prompt).rows == 2
    assert store.keys("prompts") == ["k"]
    (leftover,) = clean_leftovers(tmp_path)
    assert leftover.name.endswith(".tmp") and leftover.parent == tmp_path / "prompts"


def test_a_torn_shard_is_named_not_silently_read(tmp_path):
    store = RunStore(tmp_path)
    store.write("prompts", "k", prompts(2))
    path = store.path("prompts", "k")
    path.write_text(path.read_text()[:-20])  # a write cut short by hand: our writer never leaves this
    with pytest.raises(Exception, match=r"line 2: not a Prompt record.*delete the shard"):
        store.read("prompts", "k", Prompt)


def test_prompt_chunks_are_content_keyed_and_never_rewritten(tmp_path):
    store = RunStore(tmp_path)
    first = write_prompt_chunks(prompts(5), store, 2)
    assert [s.rows for s in first.shards] == [2, 2, 1]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "prompts").glob("shard-*.jsonl")}
    grown = write_prompt_chunks(prompts(6), store, 2)  # appended prompts change only the last chunk
    assert [s.key for s in grown.shards[:2]] == [s.key for s in first.shards[:2]]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_k_of_pool_draws_are_seeded_per_prompt():
    pool = [GeneratorSpec(name=n, model="m") for n in "abcd"]
    ps = prompts(40)
    drawn = assign(ps, pool, 2, seed=7)
    assert sum(len(v) for v in drawn.values()) == 80 and all(drawn.values())  # 2 per prompt, all used
    per_prompt = {p.prompt_id: sorted(n for n, got in drawn.items() if p in got) for p in ps}
    assert all(len(v) == 2 for v in per_prompt.values())
    assert assign(ps, pool, 2, seed=7) == drawn and assign(ps, pool, 2, seed=8) != drawn
    assert assign(ps, pool, None, seed=7) == {n: ps for n in "abcd"}


def test_one_run_at_a_time_on_a_run_dir(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rlaif.core.store import run_lock\n"
        f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"in use by another rlaif process \(pid {holder.pid}\)"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # the lock died with its process
        (tmp_path / "versions").mkdir()
        (tmp_path / "versions" / ".incoming-x").mkdir()
        (tmp_path / f".summary.json.{os.getpid()}.0123abcd.tmp").write_text("{")
        assert len(clean_leftovers(tmp_path)) == 2
