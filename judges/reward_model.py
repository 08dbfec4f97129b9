"""A reward model as a judge: a sequence-classification model scores each conversation.

For users who have a reward model (for example one trained on UltraFeedback): it reads the prompt
and completion through the model's own chat template and its score is the judgement, with nothing
to parse. A model with one label gives its logit; one with several gives the probability of its
last label (by convention the "good" one). Scores are unbounded, so the record's scale is None.
Runs with transformers on the GPU when there is one, else the CPU.
"""

from __future__ import annotations

from generation.models import resolve_model
from generation.records import AspectRating, Completion, Judgement, Prompt, content_hash
from judges.spec import JudgeSpec


class RewardScorer:
    def __init__(self, spec: JudgeSpec):
        self.spec = spec

    def __enter__(self) -> "RewardScorer":
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model(self.spec.model)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        return self

    def __exit__(self, *exc) -> None:
        del self.model

    def scores(self, conversations: list[list[dict]]) -> list[float]:
        import torch

        out: list[float] = []
        for i in range(0, len(conversations), self.spec.batch_size):
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[i : i + self.spec.batch_size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.spec.max_length, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                logits = self.model(**batch).logits.float()
            values = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, -1]
            out.extend(values.tolist())
        return out

    def judge(self, prompts: dict[str, Prompt], completions: list[Completion]) -> list[Judgement]:
        settings = self.spec.settings_hash()
        template = self.spec.judge_template()
        ok = [c for c in completions if c.ok]
        convs = [[m.model_dump() for m in prompts[c.prompt_id].messages] + [{"role": "assistant", "content": c.text}]
                 for c in ok]
        by_id = dict(zip((c.completion_id for c in ok), self.scores(convs)))
        out = []
        for c in completions:
            base = dict(judgement_id=content_hash(c.completion_id, settings), completion_id=c.completion_id,
                        prompt_id=c.prompt_id, model=c.model, judge=self.spec.name, kind="reward_model",
                        judge_model=self.spec.model, template=template.name, template_version=template.version,
                        template_hash=template.hash, settings_hash=settings, sampling={}, scale=None)
            if c.completion_id in by_id:
                out.append(Judgement(**base, aspects={"reward": AspectRating(expected=by_id[c.completion_id])},
                                     status="parsed"))
            else:
                out.append(Judgement(**base, aspects={}, status="failed", error=f"completion failed: {c.error}"))
        return out
