"""The prompts that ship with rlaif: versioned templates, bundled prompt sets, MT-Bench's judge prompts.

    templates/<name>.<version>.<ext>   judge and URIAL templates (jinja or plain text)
    sets/                              bundled prompt sets (our starter set; MT-Bench's questions, GPT-4's reference answers)
    judges/                            FastChat's MT-Bench judge prompts, unchanged

A template's name, version and content hash travel into every record it shaped, so editing a
template (or bumping its version) makes the records it produced stale and the stage reruns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import jinja2


def data_file(*parts: str):
    """A file shipped in this package (a Traversable: read_text(), is_file())."""
    return files(__name__).joinpath(*parts)


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    text: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def render(self, **values: object) -> str:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        return env.from_string(self.text).render(**values)


@lru_cache(maxsize=64)  # judges render one per request: read each file once per process
def load_template(name: str, version: str, folder: Path | None = None) -> Template:
    """`<name>.<version>.jinja` (or `.txt`) from `folder`, by default the package's templates."""
    from rlaif.core.errors import ConfigError

    where = folder if folder is not None else "rlaif/prompts/templates"
    folder = folder if folder is not None else data_file("templates")
    for ext in ("jinja", "txt"):
        path = folder.joinpath(f"{name}.{version}.{ext}")
        if path.is_file():
            return Template(name, version, path.read_text())
    available = sorted(p.name for p in folder.iterdir() if p.name.startswith(name + "."))
    raise ConfigError(f"no template {name!r} version {version!r} in {where} (have: {available})")
