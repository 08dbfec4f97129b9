"""A reward model as a judge: a sequence-classification model scores each conversation.

    inputs    a prompt and one completion, through the model's own chat template
    output    nothing to parse: a model with one label gives its logit; one with several, the
              probability of its last label (by convention the "good" one)
    record    a Judgement with one aspect, `reward` (in `expected`); unbounded, so scale None
    score     the scalar, under every score source (the kind's `score`)
    options   max_length (tokens per conversation, 2048), batch_size (8)

For users who have a reward model (for example one trained on UltraFeedback). Runs locally with
transformers, on the GPU when there is one, else the CPU; it takes no endpoint.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rlaif.core.records import AspectRating, Judgement, ScoreSource, content_hash
from rlaif.judges.base import COMPLETION_FAILED, PointwiseKind, provenance
from rlaif.prompts import Template


class RewardScorer:
    def __init__(self, model: str, max_length: int, batch_size: int):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rlaif.engines.models import resolve_model

        path = resolve_model(model)
        self.max_length, self.batch_size = max_length, batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def scores(self, conversations: list[list[dict]]) -> list[float]:
        import torch

        out: list[float] = []
        for i in range(0, len(conversations), self.batch_size):
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[i : i + self.batch_size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_length, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                logits = self.model(**batch).logits.float()
            values = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, -1]
            out.extend(values.tolist())
        return out


class RewardModelOptions(BaseModel):
    """The judge block's `options:` for this kind."""

    model_config = ConfigDict(extra="forbid")

    max_length: int = Field(2048, ge=16)  # tokens per scored conversation
    batch_size: int = Field(8, ge=1)


class RewardModel(PointwiseKind):
    name, template, version, max_tokens, scale, text = "reward_model", "chat_template", "model", 1, None, False
    options = RewardModelOptions

    def score(self, j: Judgement, source: ScoreSource = "auto", aspect: str | None = None) -> float | None:
        """A scalar has one score, whatever the source: the model's output, kept in `expected`."""
        return j.score("expected", aspect)

    def template_for(self, spec):
        return Template("chat_template", "model", "")

    def validate(self, spec):
        if spec.endpoint is not None:
            raise ValueError("a reward_model judge runs locally (transformers); it takes no endpoint")

    def hash_parts(self, spec):
        return (spec.options.max_length,)

    def judge_group(self, spec, prompts, completions, seed):
        settings = spec.settings_hash()
        ok = [c for c in completions if c.ok]
        convs = [[m.model_dump() for m in prompts[c.prompt_id].messages] + [{"role": "assistant", "content": c.text}]
                 for c in ok]
        scorer = _scorer(spec)
        by_id = dict(zip((c.completion_id for c in ok), scorer.scores(convs)))
        out = []
        for c in completions:
            base = dict(judgement_id=content_hash(c.completion_id, settings), completion_id=c.completion_id,
                        prompt_id=c.prompt_id, model=c.model, scale=None,
                        **{**provenance(spec, settings), "sampling": {}})
            if c.completion_id in by_id:
                out.append(Judgement(**base, aspects={"reward": AspectRating(expected=by_id[c.completion_id])},
                                     status="parsed"))
            else:
                out.append(Judgement(**base, aspects={}, status="failed", error=f"{COMPLETION_FAILED}{c.error}"))
        return out


_loaded: dict[tuple, RewardScorer] = {}


def _scorer(spec) -> RewardScorer:
    """One scorer per model for the process (a reward model judges chunk after chunk)."""
    key = (spec.model, spec.options.max_length, spec.options.batch_size)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = RewardScorer(spec.model, spec.options.max_length, spec.options.batch_size)
    return _loaded[key]


def release() -> None:
    _loaded.clear()
