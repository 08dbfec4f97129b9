"""The prompts that ship with rlaif: versioned templates, bundled prompt sets, MT-Bench's judge prompts.

    templates/<name>.<version>.<ext>   judge and URIAL templates (jinja or plain text)
    sets/                              bundled prompt sets (our starter set; MT-Bench's questions, GPT-4's reference answers)
    judges/                            FastChat's MT-Bench judge prompts, unchanged

A template's name, version and content hash travel into every record it shaped, so editing a
template (or bumping its version) makes the records it produced stale and the stage reruns.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

PACKAGE = "rlaif/prompts/templates"  # how messages name the package's own templates
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def data_file(*parts: str):
    """A file shipped in this package (a Traversable: read_text(), is_file())."""
    return files(__name__).joinpath(*parts)


def plain_name(value: str) -> bool:
    """A name that is one file name and nothing else: no folder, no `..`, not absolute. Template
    names and versions, run and judge names are joined onto folders: a recipe is a shared file, and
    must not reach outside them."""
    return bool(_PLAIN.fullmatch(value)) and ".." not in value


# Recipes are shared files: a template must not reach Python's objects (`cycler.__init__.__globals__`
# ...), so every template renders in Jinja's sandbox.
_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=64)
def _compiled(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    text: str
    source: str = field(default=PACKAGE, compare=False)  # the folder it came from

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def render(self, **values: object) -> str:
        from rlaif.core.errors import ConfigError

        try:
            return _compiled(self.text).render(**values)
        except SecurityError as e:
            raise ConfigError(f"template {self.name}.{self.version} ({self.source}): {e} (templates render in "
                              f"Jinja's sandbox: they read the values they are given, nothing else)") from None


@lru_cache(maxsize=64)  # judges render one per request: read each file once per process
def load_template(name: str, version: str, recipe_dir: str | None = None, home: Path | None = None) -> Template:
    """Template `name` version `version`: from `recipe_dir` (the directory a recipe names in its
    `templates_dir`) if it has it, else from `home` (a judge kind's own folder, for a kind that lives
    outside the package), by default the package's templates. Nowhere else: a name or version that
    is a path is refused."""
    from rlaif.core.errors import ConfigError

    if not plain_name(name) or not plain_name(version):
        raise ConfigError(f"template {name!r} version {version!r}: give a template's name and version, not a path "
                          f"(templates come from {PACKAGE} or the recipe's templates_dir)")
    places = [(Path(recipe_dir), recipe_dir)] if recipe_dir else []
    places.append((home, str(home)) if home is not None else (data_file("templates"), PACKAGE))
    for place, label in places:
        for ext in ("jinja", "txt"):
            path = place.joinpath(f"{name}.{version}.{ext}")
            if path.is_file():
                return Template(name, version, path.read_text(), label)
    available = sorted({p.name for place, _ in places if place.is_dir() for p in place.iterdir()
                        if p.name.startswith(name + ".")})
    raise ConfigError(f"no template {name!r} version {version!r} in {' or '.join(label for _, label in places)} "
                      f"(have: {available})")
