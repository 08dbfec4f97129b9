"""Judge kinds on a real vLLM engine (SmolLM2-135M as the judge), a base model (Gemma 3 270M) as the
judge, a reward model, garbage output from a real HTTP server, agreement, and `rlaif judge` /
`rlaif agreement [--human]` on a run directory. Tests that need no engine judge hand-written
completions (`written`), so they run in the fast tier."""

import json
import math
import threading

import pytest

from tests.support.helpers import GEMMA, GEMMA_SETTINGS, SMOL, SMOL_SETTINGS, chunks, Recording
from rlaif.core.records import Completion, Judgement, PairJudgement, content_hash
from rlaif.core.store import RunStore
from rlaif.engines.base import Sampling
from rlaif.engines.openai_endpoint import Endpoint
from rlaif.engines.pool import EnginePool, EngineSpec
from rlaif.cli.main import main as cli
from rlaif.generation.ensemble import GeneratorSpec
from rlaif.generation.stage import generate
from rlaif.prompts.prompt_sets import load_prompts
from rlaif.judges.agreement import agreement
from rlaif.judges.scores import score_of
from rlaif.judges.spec import JudgeSpec
from rlaif.judges.stage import judge_dir, run_judge, stored_judgements
from rlaif.rehearsal.openai_server import Reply
from tests.support.endpoints import serving

GENERATORS = [GeneratorSpec(name=n, model=SMOL, sampling=Sampling(temperature=1.0, max_tokens=40, seed=s))
              for n, s in (("a", 1), ("b", 2))]


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("mt_bench", limit=3)


@pytest.fixture(scope="module")
def run(smol_engine, prompts, tmp_path_factory):
    """A run directory holding two completions per prompt, as `rlaif generate` writes them."""
    store = RunStore(tmp_path_factory.mktemp("run"))
    with EnginePool() as pool:
        pool.put(EngineSpec(SMOL, None, SMOL_SETTINGS), smol_engine)
        pm = chunks(store, prompts)
        cm = generate(pm, GENERATORS, store, pool, SMOL_SETTINGS)
    return store, pm, cm, list(store.read_manifest(cm, Completion))


@pytest.fixture(scope="module")
def written(prompts, tmp_path_factory):
    """The same layout with hand-written completions (no engine): [a's three, b's three]."""
    from rlaif.core.store import Manifest

    store = RunStore(tmp_path_factory.mktemp("written"))
    pm = chunks(store, prompts)
    completions = [Completion(completion_id=f"{m}-{p.prompt_id}", prompt_id=p.prompt_id, prompt_hash=p.hash, model=m,
                              settings_hash="s", text=f"{m} answers {p.prompt_id}: " + "in some detail " * (m == "b"))
                   for m in "ab" for p in prompts]
    (chunk,) = pm.shards
    cm = Manifest(stage="completions", shards=[store.write("completions", "written", completions, group=chunk.key)])
    return store, pm, cm, completions



def judge_counts(records) -> dict[str, int]:
    """The stage's counts (`manifest_counts`) for records in memory."""
    status = [r.status for r in records]
    return {"total": len(records), "parsed": status.count("parsed"), "retried": sum(r.retries > 0 for r in records),
            "unparsed": status.count("unparsed"), "failed": status.count("failed")}


def judge(spec, run, pool=None, stage=None):
    """Run the judge stage on the run's completions (into `stage`, default its own folder); returns its records."""
    from rlaif.judges.stage import JudgeStage
    from rlaif.runners.local import LocalExecutor

    store, pm, cm, _ = run
    if stage is None:
        m = run_judge(pm, cm, spec, store, pool, SMOL_SETTINGS)
    else:
        with LocalExecutor(pool) as executor:
            m = executor.run(JudgeStage(cm, spec, SMOL_SETTINGS, folder=stage), store)
    return list(store.read_manifest(m, PairJudgement if spec.pairwise else Judgement))


def completions_of(store, pm, completions):
    """Some completions written as the run's one chunk (for judging just these)."""
    from rlaif.core.store import Manifest

    (chunk,) = pm.shards
    return Manifest(stage="completions", shards=[store.write("completions", "subset-" + str(len(completions)),
                                                             completions, group=chunk.key)])


@pytest.mark.parametrize("kind, aspects, scale", [
    ("ultrafeedback", {"helpfulness", "honesty", "instruction_following", "truthfulness"}, (1, 5)),
    ("critique", {"overall"}, (1, 10)),
    ("mt_bench_single", {"overall"}, (1, 10)),
])
def test_pointwise_kinds_rate_with_probabilities(kind, aspects, scale, pool, run):
    store, completions = run[0], run[3]
    spec = JudgeSpec(name=kind, kind=kind, model=SMOL)
    judgements = judge(spec, run, pool)
    assert len(judgements) == len(completions) == 6
    assert all(j.status == "parsed" for j in judgements), [j.error for j in judgements]
    t = spec.judge_template()
    for j in judgements:
        assert set(j.aspects) == aspects and j.kind == kind and tuple(j.scale) == scale
        assert (j.template, j.template_version, j.template_hash, j.judge_model) == (t.name, t.version, t.hash, spec.model)
        assert j.sampling == spec.sampling.model_dump()
        for a in j.aspects.values():
            assert scale[0] <= a.rating <= scale[1] and a.raw
            assert sum(a.probs.values()) == pytest.approx(1.0)
            assert scale[0] <= a.expected <= scale[1]
            if a.rating != 10 and j.retries == 0:  # greedy writes the most probable verdict
                assert a.probs[str(int(a.rating))] == max(a.probs.values())
    report = json.loads((store.root / "judgements" / kind / "report.json").read_text())
    assert report["parsed"] == 6 and report["settings_hash"] == spec.settings_hash()

    class NoEngines(EnginePool):
        def get(self, spec):
            raise AssertionError("an engine was asked for although the judge's shard was on disk")

    assert judge(spec, run, NoEngines()) == judgements  # a second run reads the shard back


@pytest.mark.parametrize("kind", ["pairwise", "mt_bench_pairwise"])
def test_pairwise_kinds_judge_both_orders(kind, pool, run):
    spec = JudgeSpec(name=kind, kind=kind, model=SMOL)
    records = judge(spec, run, pool)
    assert len(records) == 3 and all(isinstance(r, PairJudgement) for r in records)  # one pair per prompt
    assert judge_counts(records)["parsed"] == 3, [r.error for r in records]
    for r in records:
        ab, ba = r.orders
        assert (ab.first, ab.second) == (r.completion_a, r.completion_b) == (ba.second, ba.first)
        from_a = [{"first": "a", "second": "b", "tie": "tie"}[ab.winner], {"first": "b", "second": "a", "tie": "tie"}[ba.winner]]
        assert r.order_changed_verdict == (from_a[0] != from_a[1])
        assert r.winner == (from_a[0] if not r.order_changed_verdict else "tie")
        assert 0.0 <= r.p_a <= 1.0
        assert r.p_a == pytest.approx((ab.p_first + 1 - ba.p_first) / 2)


def test_a_base_model_judges_through_a_plain_transcript(gemma_engine, written):
    """Gemma 3 270M has no chat template: the judge's messages reach it as a plain transcript that
    ends in the assistant's turn, and guided decoding keeps its verdicts in the format."""
    store, pm, cm, _ = written
    assert gemma_engine.tokenizer.chat_template is None
    engine = Recording(gemma_engine)
    spec = JudgeSpec(name="base-judge", model=GEMMA, aspects=["helpfulness"])
    with EnginePool() as pool:
        pool.put(spec.engine_spec(GEMMA_SETTINGS), engine)
        m = run_judge(pm, cm, spec, store, pool, GEMMA_SETTINGS)
    records = list(store.read_manifest(m, Judgement))
    assert len(records) == 6 and judge_counts(records)["parsed"] == 6, [r.error for r in records]
    assert all(r.judge_model == GEMMA and 1 <= r.aspects["helpfulness"].rating <= 5 for r in records)
    assert all(sum(r.aspects["helpfulness"].probs.values()) == pytest.approx(1.0) for r in records)
    shown = gemma_engine.chat_text(engine.requests[0].messages)
    assert shown.startswith(gemma_engine.tokenizer.bos_token) and shown.endswith("\n\nAssistant:")
    assert "User: " in shown and "<start_of_turn>" not in shown


def test_reward_model_scores_each_completion(tmp_path, tiny_model_dir, written):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    spec = JudgeSpec(name="rm", kind="reward_model", model=str(tmp_path / "rm"))
    records = judge(spec, written)
    assert [r.status for r in records] == ["parsed"] * 6 and all(r.scale is None for r in records)
    rewards = [score_of(r) for r in records]
    assert all(math.isfinite(x) for x in rewards) and len(set(rewards)) == 6
    assert [score_of(r, "sampled") for r in records] == rewards  # a scalar has one score (the kind's rule)


# ---- garbage from a real HTTP server ------------------------------------------------------------

class GarbageJudge:
    """The responder of an OpenAI-compatible server whose judge writes whatever `replies` holds, in
    turn, a token per character; `seen`: the bodies it answered."""

    def __init__(self):
        self.replies, self.seen, self.lock = [], [], threading.Lock()

    def respond(self, body):
        with self.lock:
            self.seen.append(body)
            text = self.replies[(len(self.seen) - 1) % len(self.replies)]
        return Reply(text, list(text))


@pytest.fixture
def garbage():
    handler = GarbageJudge()
    with serving(handler.respond) as srv:
        yield handler, srv.base_url


@pytest.mark.parametrize("reply", [
    "This response is pretty good, I would rate it highly.",  # prose
    '{"rating": 4, "rationale": "cut o',  # truncated JSON: tolerant parser keeps the 4
    '{"rating": 9, "rationale": "out of range"}',
    '{"rating": "five"}',
])
def test_garbage_output_ends_unparsed_with_its_raw_text(garbage, reply, written):
    handler, url = garbage
    handler.replies = [reply]
    store, pm, _, completions = written
    spec = JudgeSpec(name="g", kind="ultrafeedback", model="served", aspects=["helpfulness"], retries=2,
                     endpoint=Endpoint(base_url=url, max_concurrency=4))
    records = judge(spec, (store, pm, completions_of(store, pm, completions[:2]), None), stage=f"garbage/{content_hash(reply)}")
    assert len(records) == 2
    body = handler.seen[0]
    assert body["response_format"]["json_schema"]["schema"]["properties"]["rating"]["enum"] == [1, 2, 3, 4, 5]
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    if reply.startswith('{"rating": 4'):
        assert all(r.status == "parsed" and r.aspects["helpfulness"].rating == 4 for r in records)
        assert len(handler.seen) == 2  # nothing to re-ask
    else:
        assert len(handler.seen) == 2 * 3  # asked, then re-asked twice each
        for r in records:
            a = r.aspects["helpfulness"]
            assert r.status == "unparsed" and r.retries == 2 and a.rating is None and a.expected is None
            assert a.raw == reply and r.score() is None
        assert handler.seen[2]["temperature"] == spec.retry_temperature  # a re-ask samples anew


def test_a_retry_that_parses_is_counted(garbage, written):
    handler, url = garbage
    handler.replies = ["no idea", '{"rating":3,"rationale":"fine"}']  # every first ask fails, the re-ask parses
    store, pm, _, completions = written
    spec = JudgeSpec(name="g", model="served", aspects=["honesty"], endpoint=Endpoint(base_url=url, max_concurrency=1))
    records = judge(spec, (store, pm, completions_of(store, pm, completions[:1]), None), stage="retry-counted")
    assert records[0].status == "parsed" and records[0].retries == 1
    assert records[0].aspects["honesty"].probs["3"] == 1.0  # the endpoint's log-probs give the distribution
    assert judge_counts(records) == {"total": 1, "parsed": 1, "retried": 1, "unparsed": 0, "failed": 0}


# ---- agreement and the CLI ---------------------------------------------------------------------

def scored(name, completions, scores):
    """A judge `name`'s parsed judgements of `completions`, with these scores."""
    return [Judgement(judgement_id=f"{name}{i}", completion_id=c.completion_id, prompt_id=c.prompt_id, model=c.model,
                      judge=name, judge_model="m", template="t", template_version="v1", template_hash="h",
                      settings_hash="s", sampling={}, status="parsed",
                      aspects={"overall": {"rating": s, "expected": s}}) for i, (c, s) in enumerate(zip(completions, scores))]


def test_agreement_of_two_judges_and_with_humans(written):
    completions = written[3]

    def judged(name, scores):
        return scored(name, completions, scores)

    # completions are [a's three, b's three]: prompt i has completions i and i + 3
    a = judged("a", [1, 5, 3, 4, 2, 6])  # prefers: the second, the first, the second
    b = judged("b", [2, 6, 3, 5, 1, 7])  # the same preferences, two ranks swapped overall
    r = agreement(a, b, ("a", "b"))
    assert r.completions_scored_by_both == 6 and r.spearman == pytest.approx(1 - 6 * 2 / (6 * 35))
    ids = [c.completion_id for c in completions]
    assert r.prompts_compared == 3 and r.chosen_agreement == pytest.approx(1.0)
    assert r.cohen_kappa == pytest.approx(1.0) and r.order_changed_verdict == {}
    c = judged("c", [4, 2, 6, 1, 5, 3])  # prefers the other completion of every prompt
    rc = agreement(a, c, ("a", "c"))
    assert rc.chosen_agreement == 0.0 and rc.cohen_kappa < 0
    from rlaif.judges.agreement import HumanLabel

    human = [HumanLabel(prompt_id=completions[i].prompt_id, completion_a=ids[i], completion_b=ids[i + 3], winner=w)
             for i, w in enumerate("bab")]
    rh = agreement(a, c, ("a", "c"), human=human)
    assert rh.human_agreement == {"a": 1.0, "c": 0.0} and rh.human_pairs == {"a": 3, "c": 3}


def test_rlaif_agreement_with_human_labels(written, tmp_path, capsys):
    """`rlaif agreement --human` on a run's stored judgements; a bad label row is one line."""
    from rlaif.core.store import Manifest

    completions, run = written[3], tmp_path / "run"
    store = RunStore(run)
    for name, scores in (("a", [1, 5, 3, 4, 2, 6]), ("c", [4, 2, 6, 1, 5, 3])):  # c prefers the other of each pair
        info = store.write(judge_dir(name), "k", scored(name, completions, scores), name=name)
        store.write_json(f"{judge_dir(name)}/report.json", {
            "judge": name, "kind": "ultrafeedback", "manifest": Manifest(stage=judge_dir(name), shards=[info]).model_dump()})
    labels = tmp_path / "labels.jsonl"
    ids = [c.completion_id for c in completions]
    labels.write_text("".join(json.dumps({"prompt_id": completions[i].prompt_id, "completion_a": ids[i],
                                          "completion_b": ids[i + 3], "winner": w}) + "\n" for i, w in enumerate("bab")))
    assert cli(["agreement", str(run), "--judges", "a", "c", "--human", str(labels)]) == 0
    report = json.loads((run / "agreement" / "a__c.json").read_text())
    assert report["human_agreement"] == {"a": 1.0, "c": 0.0} and report["human_pairs"] == {"a": 3, "c": 3}
    assert "human_agreement" in capsys.readouterr().err  # the table, on the console
    with labels.open("a") as f:
        f.write(json.dumps({"prompt_id": "x", "completion_a": "1", "completion_b": "2", "winner": "both"}) + "\n")
    assert cli(["agreement", str(run), "--judges", "a", "c", "--human", str(labels)]) == 2
    err = capsys.readouterr().err
    assert f"error: {labels}, line 4: field 'winner'" in err and "Traceback" not in err


def test_rlaif_judge_adds_a_judge_to_a_run_and_agreement_compares(run, pool, tmp_path, capsys):
    from rlaif.runners.context import using

    store = run[0]
    judge(JudgeSpec(name="ultrafeedback", model=SMOL), run, pool)  # the recipe's first judge has judged
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "name": "t", "prompts": {"source": "mt_bench", "limit": 3},  # the prompts `run` answered
        "hygiene": {"near_dup_threshold": None, "eval_prompts": None},  # MT-Bench's own: not decontaminated
        "generators": [g.model_dump(mode="json", exclude_none=True) for g in GENERATORS],
        "judges": [{"name": "ultrafeedback", "model": SMOL},
                   {"name": "crit", "kind": "critique", "model": SMOL, "sampling": {"temperature": 0, "max_tokens": 120}}],
        "engine": SMOL_SETTINGS.model_dump(),
    }))
    before = sorted((store.root / "completions").iterdir())
    texts = [p.read_text() for p in before]
    with using(pool=pool):  # the CLI's flow uses the session's engine instead of loading one
        assert cli(["judge", str(recipe), "--judge", "crit", "--out", str(store.root)]) == 0
    assert [p.read_text() for p in sorted((store.root / "completions").iterdir())] == texts  # nothing generated
    crit = stored_judgements(store, "crit")
    assert len(crit) == 6 and all(j.kind == "critique" for j in crit)
    assert "crit (critique): 6 judgements" in capsys.readouterr().err
    assert cli(["agreement", str(store.root), "--judges", "ultrafeedback", "crit"]) == 0
    report = json.loads((store.root / "agreement" / "ultrafeedback__crit.json").read_text())
    assert report["completions_scored_by_both"] == 6 and report["prompts_compared"] + report["prompts_with_tied_best"] == 3
    assert cli(["judge", str(recipe), "--judge", "nope", "--out", str(store.root)]) == 2
    assert cli(["agreement", str(store.root), "--judges", "ultrafeedback", "nope"]) == 2
    assert "no judgements by 'nope'" in capsys.readouterr().err
