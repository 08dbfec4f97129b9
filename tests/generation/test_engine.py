"""The generation stage on a real vLLM engine (the session's SmolLM2-135M-Instruct)."""

import pytest

from tests.support.helpers import SMOL, SMOL_SETTINGS, chunks
from rlaif.core.records import Completion, Message, Prompt
from rlaif.core.store import RunStore
from rlaif.engines.base import Sampling
from rlaif.engines.pool import EnginePool
from rlaif.generation import ensemble
from rlaif.generation.ensemble import GeneratorSpec, answer
from rlaif.generation.stage import generate
from rlaif.prompts.prompt_sets import load_prompts

pytestmark = pytest.mark.engine
SPEC = GeneratorSpec(name="smol", model=SMOL, sampling=Sampling(temperature=0.7, max_tokens=24, seed=3))


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("mt_bench", limit=3)


def test_generates_one_completion_per_prompt_reproducibly(smol_engine, prompts):
    first = answer(smol_engine, SPEC, prompts)
    assert [c.prompt_id for c in first] == [p.prompt_id for p in prompts]
    assert all(c.ok and c.text and 0 < c.output_tokens <= 24 and c.prompt_tokens > 10 for c in first)
    again = answer(smol_engine, SPEC, list(reversed(prompts)))
    assert {c.completion_id: c.text for c in again} == {c.completion_id: c.text for c in first}


def test_a_prompt_longer_than_the_context_is_reported_not_fatal(smol_engine, prompts):
    long = Prompt(prompt_id="too-long", messages=[Message(role="user", content="word " * 1500)])
    out = answer(smol_engine, SPEC, [prompts[0], long])
    assert out[0].ok
    assert not out[1].ok and "exceeds the context of 1024" in out[1].error and out[1].text is None


def test_urial_format_renders_a_raw_prompt(smol_engine, prompts):
    spec = SPEC.model_copy(update={"format": "urial", "system_prompt": "Be concise."})
    text = smol_engine.tokenizer.decode(smol_engine.token_ids(ensemble.request(spec, prompts[0])))
    assert text.rstrip().endswith("# Answer:\n```") and "<|im_start|>" not in text
    assert text.count("# Query:\n```") == 4  # three in-context examples and the prompt
    assert text.index("Be concise.") < text.index("# Query:\n```")  # the system prompt leads the examples


class Counting:
    """An engine that counts the requests of each call it passes on."""

    def __init__(self, engine):
        self.engine, self.label, self.calls = engine, engine.label, []

    def generate(self, requests, progress=None):
        self.calls.append(len(requests))
        return self.engine.generate(requests, progress)

    def close(self):
        pass


def test_members_on_one_model_share_one_call_and_a_deleted_shard_is_regenerated_alone(smol_engine, prompts, tmp_path):
    store, engine = RunStore(tmp_path), Counting(smol_engine)
    members = [SPEC, SPEC.model_copy(update={"name": "smol-hot", "sampling": Sampling(temperature=1.0, max_tokens=8)})]
    with EnginePool() as pool:
        pool.put(SPEC.engine_spec(SMOL_SETTINGS), engine)
        pm = chunks(store, prompts, 2)  # two chunks: 2 + 1 prompts
        first = generate(pm, members, store, pool, SMOL_SETTINGS)
        assert len(first.shards) == 4 and first.total("ok") == 6
        assert engine.calls == [4, 2] and pool.loads == {}  # both members in one call per chunk; no load
        gone = first.shards[1]  # smol-hot's shard of the first chunk
        store.path("completions", gone.key).unlink()
        engine.calls.clear()
        again = generate(pm, members, store, pool, SMOL_SETTINGS)
    assert engine.calls == [2]  # only the deleted shard's two prompts were sent
    assert [s.key for s in again.shards] == [s.key for s in first.shards]
    assert [s.sha for s in again.shards if s.key != gone.key] == [s.sha for s in first.shards if s.key != gone.key]


def test_finished_shards_are_read_back_without_loading_a_model(prompts, tmp_path, pool):
    store = RunStore(tmp_path)
    pm = chunks(store, prompts)
    done = generate(pm, [SPEC], store, pool, SMOL_SETTINGS)

    class NoEngines(EnginePool):
        def get(self, spec):
            raise AssertionError("an engine was asked for although every shard was on disk")

    assert generate(pm, [SPEC], store, NoEngines(), SMOL_SETTINGS) == done
    assert list(store.read_manifest(done, Completion))[0].model == "smol"
