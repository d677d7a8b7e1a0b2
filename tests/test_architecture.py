"""The shape of the code: imports flow one way, modules stay small, the command line and the config start light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables")
MAX_LINES = 500
#: What ``ser-study --help`` and reading a study file must not load (seconds each on a small machine).
HEAVY = ("torch", "ray", "transformers", "sklearn")  # each takes a second or more to import on 2 cores


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere (top level or inside a function): ``import a.b``, ``from a import b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_counting_imports_inside_functions():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself finds one
    modules = _modules()
    assert "study.cache.chain" in _imports(modules["study.tune.folds"], "study.tune.folds", modules)  # an import inside a function counts
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_driver_imports_flow_one_way():
    """cli -> tune -> (cache, tracking, audit, report) -> (config, io); nothing below imports what is above it."""
    modules = _modules()
    layer = {"study.cli": 0, "study.predict": 1, "study.export": 1, "study.tune": 1, "study.cache": 2, "study.tracking": 2, "study.audit": 2, "study.report": 2, "study.config": 3, "study.io": 3}

    def layer_of(name: str) -> int | None:
        for prefix, depth in layer.items():
            if name == prefix or name.startswith(prefix + "."):
                return depth
        return None

    upward = []
    for name, path in modules.items():
        depth = layer_of(name)
        for target in _imports(path, name, modules):
            target_depth = layer_of(target)
            if depth is not None and target_depth is not None and target_depth < depth:
                upward.append(f"{name} -> {target}")
        if name.startswith("trainables"):
            upward += [f"{name} -> {t}" for t in _imports(path, name, modules) if t.startswith("study")]
    assert upward == []


def test_no_module_is_a_god_file():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize(
    "code",
    [
        "import study.cli; study.cli.build_parser().format_help()",
        "import study.config.loading, study.config.study",
        "import study",
    ],
)
def test_the_command_line_and_the_config_load_no_heavy_library(code):
    probe = f"import sys; {code}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == ""


def test_every_command_prints_its_help_without_loading_a_heavy_library():
    from study.cli import build_parser

    commands = sorted(build_parser()._subparsers._group_actions[0].choices)  # argparse keeps its subcommands there
    probe = (
        "import sys, contextlib, io\nfrom study.cli import main\n"
        f"for command in {commands!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([command, '--help'])\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == ""
