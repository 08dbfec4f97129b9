"""The plain-vLLM side of bench/end_to_end.py: the same work, written as a user would with vLLM alone.

    python bench/end_to_end_plain.py MODEL_DIR QUESTIONS.jsonl CRITIQUE_TEMPLATE.jinja OUT.jsonl

One `LLM` load; two `LLM.chat` calls (the 32 first turns, seed 0 then seed 1; temperature 0.7,
256 tokens); one `LLM.chat` call judging all 64 answers greedily (160 tokens) with the critique
prompt (the pipeline's template file, rendered with jinja2) under the same JSON schema as the
pipeline's critique judge; the answers and verdicts written to one JSONL file. No log-probs, no
re-asks of an output that does not parse, no shards, no dataset. Prints one JSON line of timings
and the parsed count on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal

from jinja2 import Template
from pydantic import BaseModel, Field, ValidationError
from vllm import LLM, SamplingParams
from vllm.sampling_params import StructuredOutputsParams


class Critique(BaseModel):  # the schema of rlaif.judges.kinds.critique.CritiqueOutput
    critique: str = Field(max_length=400)
    score: Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def main() -> None:
    model, questions_file, template_file, out = sys.argv[1:5]
    t0 = time.perf_counter()
    questions = [json.loads(line)["turns"][0] for line in open(questions_file)][:32]
    llm = LLM(model=model, dtype="float32", enforce_eager=True, seed=0)
    t_load = time.perf_counter()

    chats = [[{"role": "user", "content": q}] for q in questions]
    answers, gen_tokens = [], 0
    for seed in (0, 1):
        params = SamplingParams(temperature=0.7, max_tokens=256, seed=seed)
        for q, o in zip(questions, llm.chat(chats, params, use_tqdm=False)):
            answers.append((q, o.outputs[0].text.strip()))
            gen_tokens += len(o.outputs[0].token_ids)
    t_gen = time.perf_counter()

    template = Template(open(template_file).read())
    judge_chats = [[{"role": "user", "content": template.render(instruction=q, response=a).strip()}] for q, a in answers]
    params = SamplingParams(temperature=0.0, max_tokens=160,
                            structured_outputs=StructuredOutputsParams(json=Critique.model_json_schema()))
    outputs = llm.chat(judge_chats, params, use_tqdm=False)
    verdicts = [o.outputs[0].text for o in outputs]
    t_judge = time.perf_counter()

    parsed = 0
    with open(out, "w") as f:
        for (q, a), v in zip(answers, verdicts):
            try:
                score = Critique.model_validate_json(v).score
                parsed += 1
            except ValidationError:
                score = None
            f.write(json.dumps({"prompt": q, "answer": a, "verdict": v, "score": score}) + "\n")
    print(json.dumps({"load_s": t_load - t0, "generate_s": t_gen - t_load, "judge_s": t_judge - t_gen,
                      "judged": len(verdicts), "parsed": parsed, "output_tokens": gen_tokens,
                      "judge_tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}), flush=True)


if __name__ == "__main__":
    main()
