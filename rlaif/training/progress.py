"""A training stage's steps and loss on the command's progress display, as the other stages show theirs.

TRL's own progress bar and loss lines go to the log with everything libraries print; this callback
tells the stage's `Reporter` (core/progress.py) instead: one task counting optimizer steps (so the
display gives the rate and the time left) whose status is the last logged loss. Only the first
process of a multi-GPU launch reports.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from rlaif.core.progress import Reporter, Task


class StepProgress(TrainerCallback):
    def __init__(self, reporter: Reporter, label: str = "steps"):
        self.reporter, self.label = reporter, label
        self.task: Task | None = None
        self.shown = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.task = self.reporter.task(self.label, state.max_steps)
            self.shown = 0
            self._advance(state)  # a resumed run starts at its checkpoint's step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._advance(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.task is not None and logs and isinstance(logs.get("loss"), (int, float)):
            self.task.status(f"loss {logs['loss']:.4f}")

    def _advance(self, state: Any) -> None:
        if self.task is not None and state.global_step > self.shown:
            self.task(state.global_step - self.shown)
            self.shown = state.global_step
