from generation.ensemble import GeneratorSpec, Sampling, shard_key
from generation.records import Message, Prompt
from generation.store import RunStore
from judges.spec import JudgeSpec


def test_hashes_follow_what_determines_a_record():
    base = GeneratorSpec(name="a", model="m", sampling=Sampling(temperature=0.7))
    same = GeneratorSpec(name="a", model="m", sampling=Sampling(temperature=0.7))
    hotter = GeneratorSpec(name="a", model="m", sampling=Sampling(temperature=1.0))
    urial = GeneratorSpec(name="a", model="m", format="urial", sampling=Sampling(temperature=0.7))
    assert base.settings_hash() == same.settings_hash()
    assert len({base.settings_hash(), hotter.settings_hash(), urial.settings_hash()}) == 3
    p = [Prompt(prompt_id="1", messages=[Message(role="user", content="hi")])]
    q = [Prompt(prompt_id="1", messages=[Message(role="user", content="hi!")])]
    assert shard_key(base, p) != shard_key(base, q)
    j = JudgeSpec(name="j", model="m")
    assert j.settings_hash() != JudgeSpec(name="j", model="m", aspects=["honesty"]).settings_hash()


def test_store_writes_whole_shards_only(tmp_path):
    store = RunStore(tmp_path)
    recs = [Prompt(prompt_id=str(i), messages=[Message(role="user", content="x")]) for i in range(3)]
    assert not store.has("prompts", "k")
    store.write("prompts", "k", recs)
    assert store.has("prompts", "k") and store.read("prompts", "k", Prompt) == recs
    assert not list((tmp_path / "prompts").glob("*.tmp"))
    store.write("prompts", "k2", recs[:1])
    assert len(store.read_all("prompts", Prompt)) == 4


def test_k_of_pool_draws_are_seeded_per_prompt():
    from generation.ensemble import assign_models

    pool = [GeneratorSpec(name=n, model="m") for n in "abcd"]
    prompts = [Prompt(prompt_id=str(i), messages=[Message(role="user", content="x")]) for i in range(40)]
    drawn = assign_models(prompts, pool, 2, seed=7)
    assert sum(len(v) for v in drawn.values()) == 80 and all(drawn.values())  # 2 per prompt, all used
    per_prompt = {p.prompt_id: sorted(n for n, ps in drawn.items() if p in ps) for p in prompts}
    assert all(len(v) == 2 for v in per_prompt.values())
    assert assign_models(prompts, pool, 2, seed=7) == drawn
    assert assign_models(prompts, pool, 2, seed=8) != drawn
    assert assign_models(prompts, pool, None, seed=7) == {n: prompts for n in "abcd"}
