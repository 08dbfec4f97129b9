"""The package's shape: one import name in site-packages, and dependencies that point one way.

    cli -> flows -> rehearsal -> recipe -> evaluation -> training -> preferences -> judges -> generation
        -> runners -> engines -> prompts -> core

(each room imports only rooms to its right, at the top of a module or inside a function; no two
modules import each other, however indirectly; docs/architecture.md says the same, and a test
here holds it to ROOMS). And the code's shape a reader relies on: no function takes more than 7
parameters, and no module keeps run state in a global.
"""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.helpers import ROOT

ROOMS = ["core", "prompts", "engines", "runners", "generation", "judges", "preferences", "training", "evaluation",
         "recipe", "rehearsal", "flows", "cli"]
MAX_PARAMETERS = 7


def imports(path: Path) -> list[tuple[str, int]]:
    """Every `rlaif.<room>` a module imports (at any depth, lazy imports included), with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [(n, node.lineno) for n in names if n.startswith("rlaif.")]
    return found


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def test_dependencies_point_one_way():
    wrong = []
    for path in sorted((ROOT / "rlaif").rglob("*.py")):
        mine = room("rlaif." + ".".join(path.relative_to(ROOT / "rlaif").with_suffix("").parts))
        if mine is None:
            continue
        for module, line in imports(path):
            theirs = room(module)
            if theirs is not None and ROOMS.index(theirs) > ROOMS.index(mine):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    files = {".".join(("rlaif",) + p.relative_to(ROOT / "rlaif").with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "rlaif").rglob("*.py")}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):  # at any depth: a function's import is a dependency as well
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlaif"):
                deps |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in files}
        graph[name] = deps - {name}
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for d in graph.get(n, ()):
            visit(d)
        stack.pop()

    for n in graph:
        visit(n)
    assert not cycles, cycles


def test_a_built_wheel_installs_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("rlaif_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"rlaif"}
    assert "rlaif/prompts/templates/ultrafeedback_rating.v1.jinja" in names  # package data travels
    assert "rlaif/__main__.py" in names
    (info,) = [n for n in names if n.endswith("top_level.txt")] or [None]
    if info:
        assert zipfile.ZipFile(wheel).read(info).decode().split() == ["rlaif"]


def test_python_dash_m_rlaif_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "rlaif", "--help"], capture_output=True, text=True, cwd="/", timeout=120)
    assert proc.returncode == 0 and "rlaif" in proc.stdout and "evaluate" in proc.stdout


def test_architecture_page_names_the_rooms():
    """docs/architecture.md shows the layering line and a row per room: a room added, split or
    renamed in ROOMS without its page fails here, so the page never describes another layout."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert " -> ".join(reversed(ROOMS)) in page
    missing = [r for r in ROOMS if f"| `rlaif/{r}/` |" not in page]
    assert not missing, f"docs/architecture.md has no row for {missing}"


def test_no_function_takes_more_than_seven_parameters():
    """Many parameters are state that wants a name (the run context, a version's inputs)."""
    wide = []
    for path in sorted((ROOT / "rlaif").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
                names = [n for n in names if n not in ("self", "cls")]
                if len(names) > MAX_PARAMETERS:
                    wide.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {len(names)} parameters")
    assert not wide, "\n".join(wide)


def test_no_module_keeps_run_state_in_a_global():
    """Run state lives in the run context (rlaif/runners/context.py), passed or in its context
    variable: no `global` statement rebinds a module's name while a command runs."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in sorted((ROOT / "rlaif").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Global)]
    assert not found, found
