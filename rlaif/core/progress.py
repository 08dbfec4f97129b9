"""How a stage reports progress without knowing who shows it.

A stage calls `reporter.task(label, total)` for each unit of work it starts, calls the `Task` it
gets back as requests finish (`task(n)`), `task.grow(n)` when it finds more to do than it first
said, and `task.status(text)` for a few words that change as it goes (a training loss);
`reporter.note(text)` says something worth a line. The command line shows these as one progress
display per stage (cli/console.py); a library caller gets the default, which logs.
"""

from __future__ import annotations

import logging

log = logging.getLogger("rlaif")


class Task:
    def __init__(self, label: str = "", total: int = 0):
        self.label, self.total, self.done, self.text = label, total, 0, ""

    def __call__(self, n: int = 1) -> None:
        self.done += n

    def grow(self, n: int) -> None:
        self.total += n

    def status(self, text: str) -> None:
        self.text = text


class Reporter:
    def task(self, label: str, total: int) -> Task:
        log.info("%s: %d to do", label, total)
        return Task(label, total)

    def note(self, text: str) -> None:
        log.info("%s", text)

    def stage(self, name: str) -> None:
        """A new stage begins."""
        log.info("stage %s", name)

    def stop(self) -> None:
        """Nothing more to show."""


NULL = Reporter()
