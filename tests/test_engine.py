"""The generation and judge stages on a real vLLM engine with the bundled SmolLM2-135M-Instruct."""

import pytest

from generation import ensemble
from generation.engines import EngineSettings, VLLMEngine
from generation.ensemble import GeneratorSpec, Sampling, generate, generate_shard
from generation.prompt_sets import load_prompts
from generation.records import Message, Prompt
from generation.store import RunStore

pytestmark = pytest.mark.engine
SETTINGS = EngineSettings(max_model_len=1024)
SPEC = GeneratorSpec(name="smol", model="smollm2-135m-instruct",
                     sampling=Sampling(temperature=0.7, max_tokens=24, seed=3))


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    with VLLMEngine(smollm2_dir, SETTINGS, compact_json=True) as eng:
        yield eng


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("mt_bench", limit=3)


def test_generates_one_completion_per_prompt_reproducibly(engine, prompts):
    first = generate_shard(engine, SPEC, prompts, progress=False)
    assert [c.prompt_id for c in first] == [p.prompt_id for p in prompts]
    assert all(c.ok and c.text and 0 < c.output_tokens <= 24 and c.prompt_tokens > 10 for c in first)
    again = generate_shard(engine, SPEC, list(reversed(prompts)), progress=False)
    assert {c.completion_id: c.text for c in again} == {c.completion_id: c.text for c in first}


def test_a_prompt_longer_than_the_context_is_reported_not_fatal(engine, prompts):
    long = Prompt(prompt_id="too-long", messages=[Message(role="user", content="word " * 1500)])
    out = generate_shard(engine, SPEC, [prompts[0], long], progress=False)
    assert out[0].ok
    assert not out[1].ok and "exceeds the context of 1024" in out[1].error and out[1].text is None


def test_urial_format_renders_a_raw_prompt(engine, prompts):
    spec = SPEC.model_copy(update={"format": "urial", "system_prompt": "Be concise."})
    text = engine.tokenizer.decode(ensemble.render_prompt(spec, engine.tokenizer, prompts[0]))
    assert text.rstrip().endswith("# Answer:\n```") and "<|im_start|>" not in text
    assert text.count("# Query:\n```") == 4  # three in-context examples and the prompt
    assert text.index("Be concise.") < text.index("# Query:\n```")  # the system prompt leads the examples


def test_finished_shards_are_read_back_without_loading_a_model(engine, prompts, tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    key = ensemble.shard_key(SPEC, prompts)
    store.write(ensemble.STAGE, key, generate_shard(engine, SPEC, prompts, progress=False))

    def no_engine(*a, **k):
        raise AssertionError("a model was loaded although every shard was on disk")

    monkeypatch.setattr(ensemble, "VLLMEngine", no_engine)
    assert generate(prompts, [SPEC], store, SETTINGS) == store.read(ensemble.STAGE, key, ensemble.Completion)
