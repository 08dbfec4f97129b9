"""A user's Hugging Face cache, as it is after downloading what the shipped recipes name: every model
id of recipes/ (a tiny stand-in of its kind under the real id) and the hub datasets they read
(a few rows each, in the real datasets' columns and splits). With HF_HOME pointing at it and
HF_HUB_OFFLINE=1, the recipes' commands resolve every id as on the GPU machine.

Used by the recipes' rehearsal tests (tests/rehearsal/test_rehearsal.py) and bench/rehearse.py.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.rehearsal.standins import add_dataset, add_model, seed_of, tiny_model

CHAT_MODELS = [
    # recipes/zephyr-7b-beta: the four members and the judge
    "mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct",
    "google/gemma-2-9b-it", "Qwen/Qwen2.5-72B-Instruct",
    # recipes/zephyr-7b-beta/rounds.yaml: the handbook's dSFT model, round 1's policy
    "alignment-handbook/zephyr-7b-sft-full",
    # recipes/ultrafeedback-gpt4o: the members
    "allenai/OLMo-2-1124-7B-Instruct", "microsoft/Phi-3.5-mini-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct",
]
BASE_MODELS = ["mistralai/Mistral-7B-v0.1"]  # dSFT's start in the Zephyr chain: no chat template

PROMPTS = [
    "Write a haiku about a lighthouse in winter.",
    "Explain why the sky looks blue during the day but red at sunset.",
    "Give three tips for keeping basil alive on a windowsill.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How many minutes are there in a week? Show your arithmetic.",
    "Draft a polite email declining a meeting invitation.",
    "Which planets in the solar system have rings?",
    "Suggest a name for a bakery that sells only sourdough bread.",
    "Translate 'good morning, how are you?' into Spanish and French.",
    "Describe the water cycle to a ten-year-old.",
    "List the pros and cons of working from home.",
    "Why do cats purr? Give the leading hypotheses.",
    "Write a limerick about a forgetful robot.",
    "What should I pack for a three-day hike in the mountains?",
    "Compare renting and buying a home for a young couple.",
    "Explain recursion using an everyday example.",
    "What causes the seasons on Earth?",
    "Propose a weekly workout plan for a beginner.",
    "How does a bill become a law in the United States?",
]


def conversation(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def ultrafeedback_rows(split: str) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized's columns: a string prompt and full conversations."""
    return [{"prompt": p, "prompt_id": f"{split}-{i:04d}",
             "chosen": conversation(p, f"A careful answer to: {p}"), "rejected": conversation(p, "No idea."),
             "messages": conversation(p, f"A careful answer to: {p}"), "score_chosen": 8.0, "score_rejected": 3.0}
            for i, p in enumerate(PROMPTS)]


def ultrachat_rows(split: str) -> list[dict]:
    """HuggingFaceH4/ultrachat_200k's columns: prompt, prompt_id, messages."""
    return [{"prompt": p, "prompt_id": f"{split}-{i:04d}", "messages": conversation(p, f"Here is an answer: {p}")}
            for i, p in enumerate(PROMPTS)]


def fill(hf_home: Path, models_dir: Path) -> Path:
    """Every model and dataset the shipped recipes name, in `hf_home` (tiny models built in `models_dir`)."""
    for i, (repo, kind) in enumerate([(m, "chat") for m in CHAT_MODELS] + [(m, "base") for m in BASE_MODELS]):
        add_model(hf_home, repo, tiny_model(models_dir / str(i), kind, seed_of(repo)))
    add_dataset(hf_home, "HuggingFaceH4/ultrafeedback_binarized",
                {s: ultrafeedback_rows(s) for s in ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen")})
    add_dataset(hf_home, "HuggingFaceH4/ultrachat_200k",
                {s: ultrachat_rows(s) for s in ("train_sft", "test_sft", "train_gen", "test_gen")})
    return hf_home
