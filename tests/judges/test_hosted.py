"""Hosted judges against the strict OpenAI stand-in (rlaif/rehearsal/openai_server/) over real HTTP: requests
shaped per provider, every judge kind with a chat and a reasoning model, joint UltraFeedback rating,
a wrong key, rate limits and Retry-After, log-probs off, and `rlaif run --dry-run`. No model is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.support.helpers import ROOT
from rlaif.core.records import Completion, Judgement, PairJudgement
from rlaif.core.store import Manifest, RunStore
from rlaif.engines import providers
from rlaif.engines.base import Constraint, Request, Sampling
from rlaif.engines.openai_endpoint import Endpoint, EndpointEngine, EndpointRefused
from rlaif.engines.rate_limits import RateLimiter
from rlaif.prompts.prompt_sets import load_prompts, write_prompt_chunks
from rlaif.judges.kinds.ultrafeedback import RATING
from rlaif.judges.parsing import bracket_format, joint_format, parse_output
from rlaif.judges.spec import JudgeSpec
from rlaif.judges.stage import manifest_counts, run_judge

from rlaif.rehearsal.openai_server import OpenAIServer, check_strict_schema, default_responder

KEY = "sk-test-key-123456"
KINDS = ["ultrafeedback", "critique", "mt_bench_single", "pairwise", "mt_bench_pairwise"]
SENTENCE = ("The response addresses the question directly, gives one concrete example, and stays accurate "
            "throughout, though it could say a little more about its limits.")


def talkative(body: dict) -> str:
    """The default answer with every free-text field a full sentence, as a hosted judge writes them."""
    def fill(x):
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        return SENTENCE if x == "short answer" else x

    text = default_responder(body)
    try:
        return json.dumps(fill(json.loads(text)))
    except json.JSONDecodeError:
        return text


@pytest.fixture
def srv(monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    with OpenAIServer(api_key=KEY, responder=talkative, reasoning_tokens=200) as s:
        yield s


def endpoint(srv, **kw) -> Endpoint:
    return Endpoint(**{"base_url": srv.base_url, "api_key_env": "TEST_OPENAI_KEY", "provider": "openai",
                       "max_retries": 2, **kw})


def completions_run(tmp_path, prompts: int, per_prompt: int):
    """A run dir holding `per_prompt` completions of each of `prompts` MT-Bench prompts (as if generated)."""
    store = RunStore(tmp_path)
    ps = load_prompts("mt_bench", limit=prompts)
    pm = write_prompt_chunks(ps, store, 16)
    shards = []
    for chunk in pm.shards:
        mine = {p.prompt_id for p in store.read("prompts", chunk.key, type(ps[0]))}
        comps = [Completion(completion_id=f"{p.prompt_id}-m{i}", prompt_id=p.prompt_id, prompt_hash=p.hash,
                            model=f"m{i}", settings_hash="s", text=f"Answer {i} to: {p.text[:60]}")
                 for p in ps if p.prompt_id in mine for i in range(per_prompt)]
        shards.append(store.write("completions", f"c-{chunk.key}", comps, group=chunk.key))
    return store, pm, Manifest(stage="completions", shards=shards)


# ----------------------------------------------------------------------------- request shapes
def test_strict_schemas_are_in_the_strict_subset():
    schemas = [RATING.schema(), joint_format(RATING, 4).schema(), bracket_format(("A", "B", "C"), 400).schema()]
    for schema in schemas:
        with pytest.raises(Exception, match="'maxLength' is not permitted"):
            check_strict_schema("s", schema)  # the kinds' own schemas: what vLLM enforces
        strict = providers.strict_schema(schema)
        check_strict_schema("s", strict)  # what the API takes
        assert "maxLength" not in json.dumps(strict) and strict["required"] == list(strict["properties"])


def test_requests_are_shaped_for_their_server():
    chat = Request(key="k", sampling=Sampling(temperature=0.0, max_tokens=64), seed=3,
                   messages=[{"role": "user", "content": "Rate it."}], logprobs=20,
                   constraint=Constraint("V", json_schema=RATING.schema(), regex=r"\[\[\d\]\]"))
    vllm = providers.body(chat, "m", providers.Shape("vllm"))
    assert vllm["structured_outputs"] == {"regex": r"\[\[\d\]\]"} and vllm["max_tokens"] == 64
    openai = providers.body(chat, "gpt-4o-mini", providers.Shape("openai"))
    assert "structured_outputs" not in openai and "max_tokens" not in openai
    assert openai["max_completion_tokens"] == 64 and openai["top_logprobs"] == 20
    assert openai["response_format"]["json_schema"]["schema"] == providers.strict_schema(RATING.schema())
    e = Endpoint(base_url="https://api.openai.com/v1", reasoning_effort="low", reasoning_tokens=1000)
    shape = providers.shape_for("openai", e, "o3-mini")
    reasoning = providers.body(chat, "o3-mini", shape)
    assert reasoning["max_completion_tokens"] == 1064 and reasoning["reasoning_effort"] == "low"
    assert not {"temperature", "top_p", "max_tokens", "logprobs", "top_logprobs"} & set(reasoning)
    assert not providers.shape_for("openai", e, "gpt-5-chat-latest").reasoning
    assert not providers.shape_for("other", e, "o3-mini").reasoning  # only where the endpoint says so
    srv = OpenAIServer()
    for body, path in ((openai, "chat/completions"), (reasoning, "chat/completions")):
        status, answer = srv.answer(path, body)
        assert status == 200, answer


def test_auto_recognises_the_server(srv):
    assert providers.provider_of([{"id": "x", "owned_by": "vllm"}], "http://127.0.0.1:8000/v1") == "vllm"
    assert providers.provider_of([{"id": "x", "owned_by": "acme"}], "https://api.acme.ai/v1") == "other"
    engine = EndpointEngine(endpoint(srv, provider="auto"), "gpt-4o-mini")
    assert engine.shape.provider == "openai" and EndpointEngine(endpoint(srv, provider="auto"), "o3-mini").shape.reasoning
    assert srv.count("/models") == 1  # asked once per process
    assert Endpoint(base_url="https://api.openai.com/v1").hosted and not Endpoint(base_url=srv.base_url).hosted
    assert not Endpoint(base_url="http://vllm-judge:8000/v1").hosted and Endpoint(base_url=srv.base_url, provider="other").hosted


def test_a_server_without_a_model_list_is_named_not_a_type_error():
    """A server that answers GET /models with something else (here a chat completion) stops the stage
    with a line that says so, instead of a bare TypeError from deep in the client."""
    from tests.support.endpoints import serving

    with serving(models=("a",)) as srv:
        chat = {"id": "x", "object": "chat.completion", "created": 0, "model": "a", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hello"}}]}
        srv.fault = lambda path, body: (200, chat) if path.endswith("/models") else None
        engine = EndpointEngine(Endpoint(base_url=srv.base_url, provider="auto"), "a")
        with pytest.raises(EndpointRefused, match=r"/models answered without a model list"):
            engine.generate([Request(key="k", sampling=Sampling(), seed=0, messages=[{"role": "user", "content": "hi"}])])


# ----------------------------------------------------------------------------- every kind, chat and reasoning
CASES = [(k, m) for k in KINDS for m in ("per_completion", "joint") if k == "ultrafeedback" or m == "per_completion"]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "o3-mini"])
@pytest.mark.parametrize("kind, mode", CASES)
def test_every_kind_parses_its_verdicts_on_the_hosted_api(srv, tmp_path, kind, mode, model):
    store, pm, cm = completions_run(tmp_path, prompts=30, per_prompt=4)
    spec = JudgeSpec(name=kind, kind=kind, model=model, endpoint=endpoint(srv),
                     **({"mode": mode} if kind == "ultrafeedback" else {}))
    m = run_judge(pm, cm, spec, store)
    counts = manifest_counts(m)
    assert counts["total"] == (30 * 6 if spec.pairwise else 30 * 4)
    assert counts["parsed"] / counts["total"] >= 0.995, counts
    assert srv.count(status=400) == srv.count(status=403) == 0
    records = list(store.read_manifest(m, PairJudgement if spec.pairwise else Judgement))
    reasoning = model.startswith("o")
    assert {r.score_source for r in records} == {"sampled" if reasoning else "expected"}
    sent = [r["body"] for r in srv.requests if r["path"].endswith("/chat/completions")]
    if reasoning:  # no sampling knobs and no log-probs; room for the hidden reasoning
        assert all("logprobs" not in b and "temperature" not in b and b["max_completion_tokens"] > 200 for b in sent)
    if kind.startswith("mt_bench"):  # asked as strict JSON with FastChat's prompt, not with vLLM's regex
        assert all(b["response_format"]["type"] == "json_schema" for b in sent)
    if kind == "ultrafeedback":
        per_prompt = 4 if mode == "joint" else 16  # UltraFeedback's own count: one request per aspect
        assert len(sent) == 30 * per_prompt
        for r in records:
            assert set(r.aspects) == {"helpfulness", "honesty", "instruction_following", "truthfulness"}
            for a in r.aspects.values():
                assert a.rationale == SENTENCE and 1 <= a.rating <= 5
                assert (a.probs is None) == reasoning
                if mode == "joint":  # the order shown, a permutation of the prompt's completions
                    assert sorted(a.order) == sorted(f"{r.prompt_id}-m{i}" for i in range(4))
        if mode == "joint":  # shown in a seeded random order, not as generated (m0, m1, m2, m3)
            assert any(a.order != sorted(a.order) for r in records for a in r.aspects.values())


def test_free_text_mt_bench_ratings_are_read_as_fastchat_reads_them(srv, tmp_path):
    """An unstructured MT-Bench judge writes what FastChat's show_result.py counts: a rating between
    the whole ones ([[7.5]]) and the single-bracket form ("Rating: [7]"); both are scores here."""
    written = iter(["Helpful, but terse. Rating: [[7.5]]", "Accurate. Rating: [7]"] * 2)
    srv.responder = lambda body: next(written)
    store, pm, cm = completions_run(tmp_path, prompts=2, per_prompt=2)
    spec = JudgeSpec(name="mt", kind="mt_bench_single", model="gpt-4o-mini", endpoint=endpoint(srv, max_concurrency=1),
                     structured=False, logprobs=False, retries=0)
    records = list(store.read_manifest(run_judge(pm, cm, spec, store), Judgement))
    assert all(r.status == "parsed" for r in records) and len(records) == 4
    assert sorted(r.aspects["overall"].rating for r in records) == [7.0, 7.0, 7.5, 7.5]
    assert sorted(r.score() for r in records) == [7.0, 7.0, 7.5, 7.5]
    assert all("response_format" not in r["body"] for r in srv.requests if r["path"].endswith("/chat/completions"))


def test_a_failed_joint_request_is_sent_again_alone(srv, tmp_path):
    store, pm, cm = completions_run(tmp_path, prompts=3, per_prompt=4)
    spec = JudgeSpec(name="uf", model="gpt-4o-mini", endpoint=endpoint(srv, max_retries=0, max_concurrency=1))
    srv.add_faults((500, 1))  # the first request: one prompt's rating of one aspect, for all 4 completions
    m = run_judge(pm, cm, spec, store)
    first = list(store.read_manifest(m, Judgement))
    failed = [r for r in first if r.status == "failed"]
    assert len(failed) == 4 and all(r.retryable for r in failed) and len({r.prompt_id for r in failed}) == 1
    assert m.total("retryable") == 4
    sent = srv.count("/chat/completions")
    m = run_judge(pm, cm, spec, store)
    assert srv.count("/chat/completions") - sent == 4  # that prompt's 4 aspects again, nothing else
    again = list(store.read_manifest(m, Judgement))
    assert all(r.status == "parsed" for r in again) and len(again) == 12
    kept = {r.completion_id: r for r in first if r.status == "parsed"}
    assert all(r == kept[r.completion_id] for r in again if r.completion_id in kept)


def test_log_probs_can_be_switched_off(srv, tmp_path):
    store, pm, cm = completions_run(tmp_path, prompts=2, per_prompt=2)
    on = JudgeSpec(name="on", model="gpt-4o-mini", endpoint=endpoint(srv))
    off = JudgeSpec(name="off", model="gpt-4o-mini", endpoint=endpoint(srv), logprobs=False)
    assert on.settings_hash() != off.settings_hash()
    m = run_judge(pm, cm, off, store)
    records = list(store.read_manifest(m, Judgement))
    assert all(r.status == "parsed" and r.score_source == "sampled" for r in records)
    assert all(a.probs is None for r in records for a in r.aspects.values())
    assert not any("logprobs" in r["body"] for r in srv.requests if r["body"])


# ----------------------------------------------------------------------------- errors and limits
@pytest.mark.parametrize("provider", ["auto", "openai"])
def test_a_bad_key_stops_the_stage_at_once(srv, tmp_path, monkeypatch, provider):
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-wrong-key-000000")
    store, pm, cm = completions_run(tmp_path, prompts=20, per_prompt=4)
    spec = JudgeSpec(name="uf", model="gpt-4o-mini", endpoint=endpoint(srv, provider=provider, max_concurrency=2))
    with pytest.raises(EndpointRefused) as e:
        run_judge(pm, cm, spec, store)
    message = str(e.value)
    assert "HTTP 401" in message and "Incorrect API key provided" in message and "$TEST_OPENAI_KEY" in message and "\n" not in message
    assert "sk-wrong-key-000000" not in message  # the server masks it; we never print it
    inference = srv.count("/chat/completions")
    assert inference == 0 if provider == "auto" else inference <= 2  # auto: GET /models is refused first
    assert not list((tmp_path / "judgements").rglob("shard-*.jsonl"))


def test_retry_after_is_honoured_and_an_exhausted_quota_stops(srv):
    srv.retry_after = 0.4
    srv.add_faults((429, 2))
    engine = EndpointEngine(endpoint(srv, max_concurrency=1, max_retries=3), "gpt-4o-mini")
    requests = [Request(key=str(i), sampling=Sampling(max_tokens=8), seed=i,
                        messages=[{"role": "user", "content": f"hi {i}"}]) for i in range(3)]
    assert all(r.ok for r in engine.generate(requests))
    log = [r for r in srv.requests if r["path"].endswith("/chat/completions")]
    assert [r["status"] for r in log] == [429, 429, 200, 200, 200]
    assert log[1]["time"] - log[0]["time"] >= 0.4 and log[2]["time"] - log[1]["time"] >= 0.4  # waited, at least
    srv.add_faults(("insufficient_quota", 1))
    with pytest.raises(EndpointRefused, match="HTTP 429: You exceeded your current quota"):
        engine.generate(requests[:1])
    assert srv.count("/chat/completions", 429) == 3  # never retried


def test_requests_and_tokens_per_minute_with_a_fake_clock():
    now = [0.0]
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=1000, clock=lambda: now[0])

    def send(tokens: int) -> float:
        start = now[0]
        while (wait := limiter.wait(tokens)) > 0:
            now[0] += wait
        return now[0] - start

    assert [send(10) for _ in range(60)] == [0.0] * 60  # a minute's worth at once
    assert send(10) == pytest.approx(1.0)  # then one a second
    left = 1000 - 61 * 10 + 1000 / 60  # tokens: a minute's worth, 61 sends, one second's refill
    assert send(990) == pytest.approx((990 - left) * 60 / 1000)  # waits for the tokens, not the requests
    limiter.pause(30)  # a Retry-After: nothing for 30 s, whatever the buckets hold
    now[0] += 1000
    limiter.pause(30)
    assert send(1) == pytest.approx(30.0)


# ----------------------------------------------------------------------------- joint parsing
def test_joint_answers_are_read_per_text_with_their_probabilities():
    fmt = joint_format(RATING, 2)
    text = '{"text_1":{"rating":4,"rationale":"Good."},"text_2":{"rating":2,"rationale":"Wrong."}}'
    tokens = [('{"text_1":{"rating":', [('{"text_1":{"rating":', 0.0)]), ("4", [("4", -0.1), ("5", -2.4)]),
              (',"rationale":"Good."},"text_2":{"rating":', [(',"rationale":"Good."},"text_2":{"rating":', 0.0)]),
              ("2", [("2", -0.05), ("1", -3.0)]), (',"rationale":"Wrong."}}', [(',"rationale":"Wrong."}}', 0.0)])]
    p = parse_output(fmt, text, tokens)
    assert p.complete and p.items["text_1"].value == "4" and p.items["text_2"].text == "Wrong."
    assert max(p.items["text_1"].probs, key=p.items["text_1"].probs.get) == "4"
    assert set(p.items["text_2"].probs) == set(RATING.values) and p.items["text_2"].probs["1"] > 0
    cut = parse_output(fmt, '{"text_1":{"rating":3,"rationale":"Fine."},"text_2":{"rat')
    assert cut.items["text_1"].value == "3" and cut.items["text_2"].value is None and not cut.complete
    free = parse_output(fmt, "Text 1\nRating: 5\nRationale: great.\nText 2\nRating: 1\nRationale: off topic.")
    assert [free.items[f"text_{i}"].value for i in (1, 2)] == ["5", "1"]


# ----------------------------------------------------------------------------- dry run
def test_dry_run_prints_the_bill_and_sends_nothing(srv, tmp_path):
    from rlaif.recipe.dry_run import estimate
    from rlaif.recipe.spec import load_recipe

    recipe = ROOT / "recipes" / "ultrafeedback-gpt4o.yaml"
    sets = ["prompts.source=starter", "prompts.limit=10", f"judges.0.endpoint.base_url={srv.base_url}",
            f"judges.1.endpoint.base_url={srv.base_url}"]
    rows = {(e.stage, e.name): e for e in estimate(load_recipe(recipe, sets))}
    uf = rows[("judge", "uf-gpt4o")]
    assert uf.requests == 10 * 4  # joint: one request per prompt per aspect
    assert rows[("generate", "qwen2.5-7b-instruct")].requests == 10
    assert uf.cost == pytest.approx(0.5 * (uf.input_tokens * 2.5 + uf.output_tokens * 10) / 1e6)
    per = {(e.stage, e.name): e for e in estimate(load_recipe(recipe, sets + ["judges.0.mode=per_completion"]))}
    assert per[("judge", "uf-gpt4o")].requests == 10 * 16

    out = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": "unused"}
    proc = subprocess.run([sys.executable, "-m", "rlaif", "run", str(recipe), "--dry-run", "--out", str(out),
                           *[x for s in sets for x in ("--set", s)]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = proc.stdout + proc.stderr
    assert "uf-gpt4o" in shown and f"{uf.cost:,.2f}" in shown and "nothing sent" in shown
    assert srv.requests == [] and not out.exists()  # nothing sent, nothing written


def test_the_hosted_recipe_loads():
    from rlaif.recipe.spec import load_recipe

    r = load_recipe(ROOT / "recipes" / "ultrafeedback-gpt4o.yaml")
    gpt4o, o4 = r.judges
    assert gpt4o.mode == "joint" and gpt4o.endpoint.batch and gpt4o.endpoint.api_key_env == "OPENAI_API_KEY"
    assert o4.mode == "joint" and o4.endpoint.reasoning_effort == "low"
    assert yaml.safe_load((ROOT / "recipes" / "ultrafeedback-gpt4o.yaml").read_text())["judges"][0]["model"]
