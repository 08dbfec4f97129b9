"""What actually answered a judge's requests, as the answers themselves say.

A recipe names a judge's model; an endpoint may serve that name with another snapshot from one
day to the next (a hosted `gpt-4o` answers as `gpt-4o-2024-08-06`, later as a newer one), and a
local engine's version changes what a model writes. Every verdict records what answered
(`Judged.served`: the model the response names and the provider's `system_fingerprint`, or the
local engine, its version and the model's snapshot); this module turns those into one label per
identity and counts them, for the judge's report, the dataset card and `rlaif agreement`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rlaif.core.records import Judged

UNKNOWN = "unknown (not recorded)"


def label(served: dict[str, str] | None) -> str:
    """One line per identity: `gpt-4o-2024-08-06 (fp_abc123)`, `smollm2 @ab12cd34ef56 on vllm 0.32.0`."""
    if not served:
        return UNKNOWN
    text = served.get("model", "?")
    if served.get("revision"):
        text += f" @{served['revision']}"
    if served.get("fingerprint"):
        text += f" ({served['fingerprint']})"
    if served.get("engine"):
        text += f" on {served['engine']}"
    return text


def judged_by(records: Iterable[Judged]) -> dict[str, int]:
    """How many verdicts each identity gave (records that got no answer at all are left out)."""
    counts = Counter(label(r.served) for r in records if r.served or r.status != "failed")
    return dict(counts.most_common())


def changed(before: dict[str, int] | None, now: dict[str, int]) -> list[str]:
    """The identities that answered now and never before (none when there was no before)."""
    if not before:
        return []
    return [name for name in now if name not in before and name != UNKNOWN]
