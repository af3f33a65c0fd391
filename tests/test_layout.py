"""The shape of the tree (issue #23): rooms stack one way, no function is a wall of code, the entry is small."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pdspace"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _trees() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text())) for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, tree: ast.Module, modules: set[str]) -> set[str]:
    """The pdspace modules `name` imports anywhere in its file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            # `from pkg import submodule` needs the submodule; `from pkg import name` needs pkg itself
            found |= subs if len(subs) == len(node.names) else subs | ({base} & modules)
    return found - {name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_counting_imports_inside_functions():
    trees = _trees()
    modules = set(trees)
    graph = {name: _imports(name, path, tree, modules) for name, (path, tree) in trees.items()}
    assert graph["pdspace.train"] >= {"pdspace.job"}  # the check sees real edges
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_function_over_60_lines():
    long = [f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _trees().values() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert long == []


def test_the_entry_point_is_small_and_its_pipeline_reads_in_40_lines():
    path, tree = _trees()["pdspace.train"]
    assert len(path.read_text().splitlines()) <= 280
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_run")
    assert run.end_lineno - run.lineno + 1 <= 40


def test_the_job_shell_and_the_design_layer_import_upward_nothing():
    trees = _trees()
    modules = set(trees)

    def imported(name: str) -> set[str]:
        path, tree = trees[name]
        return _imports(name, path, tree, modules)

    assert not {m for m in imported("pdspace.job") if m.startswith(("pdspace.train", "pdspace.search"))}
    for name in [m for m in trees if m.startswith("pdspace.design")]:
        path, tree = trees[name]
        roots = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not roots & {"torch", "peft", "transformers"}, name
        assert not {m for m in imported(name) if not m.startswith(("pdspace.design", "pdspace.errors"))}, name


def test_the_tasks_and_metrics_import_without_the_data_module():
    """`import pdspace.report` (pdspace-report), `pdspace.data.tasks` and a study (`pdspace.search.study`: the
    sweeper, a replay) pay neither for Lightning nor for `datasets`, which `pdspace.data` re-exports through its data
    module; `pdspace.design` pays for no torch (the package's own names load on first use). The re-exports still
    work, on first use."""
    import subprocess
    import sys

    heavy = "('pdspace.data.datamodule', 'lightning', 'datasets', 'torch')"
    code = ("import sys; import pdspace.design; from pdspace import Design, DesignSpace; "
            f"print(sorted(m for m in {heavy} if m in sys.modules)); "
            "import pdspace.report, pdspace.data.tasks, pdspace.search.study; "
            f"print(sorted(m for m in {heavy} if m in sys.modules)); "
            "from pdspace import apply_design, save_pretrained; import pdspace; assert 'merge_lora' in dir(pdspace)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "['torch']"]
    code = "from pdspace.data import PDSpaceDataModule, get_task; import pdspace.data as d; assert 'load_rows' in dir(d)"
    subprocess.run([sys.executable, "-c", code], check=True)
