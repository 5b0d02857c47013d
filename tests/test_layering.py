"""The import direction envs <- models <- rayexp is a contract: envs stays numpy-only so it runs
anywhere (env runners, laptops) and models never reaches into the pipeline."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "envs": {"torch", "ray", "models", "rayexp", "mlflow"},
    "models": {"rayexp", "mlflow"},
}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files}
    assert not {f: m for f, m in bad.items() if m}, "imports against the envs <- models <- rayexp direction"


def test_ray_only_in_rl_module():
    offenders = [
        str(f.relative_to(ROOT))
        for f in (ROOT / "models").rglob("*.py")
        if "ray" in imported_roots(f) and f.name != "rl_module.py"
    ]
    assert not offenders, f"RLlib belongs in models/rl_module.py only: {offenders}"


def test_checker_sees_imports(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("import torch.nn\nfrom ray import tune\nfrom . import sibling\n")
    assert imported_roots(probe) == {"torch", "ray"}


# --- the import graph inside the project: no cycles, layers, and why an import is local -----------
# Cycles and layers are checked over every import, function-local ones included: a local import is
# still a dependency, and hiding a circle behind one is what this guards against. A function-local
# import is allowed only of a heavy module (one that loads torch, Ray, matplotlib, devinterp or
# MLflow when imported), so the driver and `rayexp validate` stay light (docs/design.md §3).

PACKAGES = ("envs", "models", "rayexp")
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
IMPORTS = (ast.Import, ast.ImportFrom)
HEAVY_ROOTS = {"torch", "ray", "matplotlib", "devinterp", "mlflow"}

# lower layers never import higher ones (module-level imports)
RAYEXP_LAYERS = [
    {  # leaves: numerics, tables, storage, tracking
        "rayexp.stats",
        "rayexp.ridge",
        "rayexp.policy",
        "rayexp.exact",
        "rayexp.specs",
        "rayexp.figures",
        "rayexp.tables",
        "rayexp.storage",
        "rayexp.tracking",
        "rayexp.ray_local",
        "rayexp.console",
        "rayexp.machine",
        "rayexp.safe_yaml",
        "rayexp.weights",
        "rayexp.ppo_state",
    },
    {"rayexp.axes", "rayexp.ppo_settings", "rayexp.settings", "rayexp.cache"},  # the sweep file's schema
    {"rayexp.artifacts", "rayexp.probes", "rayexp.rollouts", "rayexp.analysis", "rayexp.study"},
    {"rayexp.resolved", "rayexp.ppo"},  # one resolved trial; PPO
    {"rayexp.analyses", "rayexp.studies"},  # prefixes: every module under these packages
    {"rayexp.registry"},
    {"rayexp.checks", "rayexp.config"},  # reading and checking sweep files (analysis params via the registry)
    {"rayexp.context", "rayexp.stages", "rayexp.trial"},
    {"rayexp.analyze", "rayexp.report", "rayexp.reproduce", "rayexp.monitor"},
    {"rayexp.sweep"},
    {"rayexp.cli", "rayexp.__main__", "rayexp"},
]


def parse_project(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, ast.Module]]:
    out = {}
    for path in sorted(p for package in PACKAGES for p in (root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (path, ast.parse(path.read_text()))
        for i in range(1, len(parts)):  # namespace packages (no __init__.py) are importable too
            out.setdefault(".".join(parts[:i]), (root.joinpath(*parts[:i], "__init__.py"), ast.Module(body=[])))
    return out


def _is_type_checking(test: ast.expr) -> bool:  # `TYPE_CHECKING` or `typing.TYPE_CHECKING`
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _import_time(stmts):
    for node in stmts:
        if isinstance(node, IMPORTS):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time(node.orelse)  # the else branch does run
        elif not isinstance(node, (*FUNCS, ast.ClassDef)):
            yield from _import_time(
                [*getattr(node, "body", []), *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            )
            for clause in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]:
                yield from _import_time(clause.body)


def _resolve(node, module: str, is_package: bool, modules) -> list[str]:
    """Project modules an import statement names: `from x import y` means x.y when that is a module."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [t for t in targets if t.split(".")[0] in PACKAGES]


def _all_imports(tree: ast.Module):
    """Every import statement but those under `if TYPE_CHECKING:` (they never run)."""
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    return [n for n in ast.walk(tree) if isinstance(n, IMPORTS) and id(n) not in skip]


def import_graph(root: pathlib.Path, local: bool = False) -> dict[str, set[str]]:
    """module -> project modules it imports: at import time, or (``local``) anywhere in its code."""
    project = parse_project(root)
    graph = {}
    for module, (path, tree) in project.items():
        edges = set()
        for node in _all_imports(tree) if local else _import_time(tree.body):
            for target in _resolve(node, module, path.name == "__init__.py", project):
                # A missing target (stale path mid-move) fails on import anyway; its parents still run.
                edges |= {target} & project.keys()
                parts = target.split(".")
                # Importing a.b.c runs a and a.b first; an ancestor of the importer is already running.
                edges |= {
                    p
                    for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                    if p in project and not module.startswith(p + ".")
                }
        graph[module] = edges - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle per strongly connected component (Tarjan), so a tangle reads as one failure."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v roots a component: everything above it on the stack
            scc = set(stack[stack.index(v) :])
            del stack[stack.index(v) :]
            on_stack.difference_update(scc)
            sccs.append(scc)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for scc in (s for s in sccs if len(s) > 1):
        start, end = min(scc), None
        parent, frontier = {start: None}, [start]
        while end is None:  # BFS inside the component: the shortest way back to start
            v = frontier.pop(0)
            end = v if start in graph[v] else None
            for w in sorted(graph[v] & scc - parent.keys()):
                parent[w] = v
                frontier.append(w)
        path = [end]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        tangle = f"  (tangle of {len(scc)}: {', '.join(sorted(scc))})" if len(scc) > len(path) else ""
        cycles.append(" -> ".join([*reversed(path), start]) + tangle)
    return cycles


def heavy_modules(root: pathlib.Path) -> set[str]:
    """Project modules whose import loads a heavy library, directly or through project modules."""
    project, graph = parse_project(root), import_graph(root)
    heavy = set()
    for module, (_, tree) in project.items():
        for node in _import_time(tree.body):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            third_party = node.__class__ is ast.Import or node.level == 0
            if third_party and any(n.split(".")[0] in HEAVY_ROOTS for n in names):
                heavy.add(module)
    grew = True
    while grew:
        more = {m for m, targets in graph.items() if targets & heavy} - heavy
        heavy |= more
        grew = bool(more)
    return heavy


def function_local_project_imports(root: pathlib.Path, package: str = "rayexp") -> list[str]:
    """Function-local imports of light project modules (nothing heavy to defer): hoist them."""
    project, heavy = parse_project(root), heavy_modules(root)
    offenders = []
    for module, (path, tree) in project.items():
        if module.split(".")[0] != package:
            continue
        local = {n for f in ast.walk(tree) if isinstance(f, FUNCS) for n in ast.walk(f) if isinstance(n, IMPORTS)}
        for node in sorted(local, key=lambda n: n.lineno):
            names = sorted(set(_resolve(node, module, path.name == "__init__.py", project)) - heavy)
            if names:
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {', '.join(names)}")
    return offenders


def rayexp_layer(module: str) -> int | None:
    for i, layer in enumerate(RAYEXP_LAYERS):
        # the bare root entry means rayexp/__init__.py only, else it would swallow every undeclared module
        if any(module == e or ("." in e and module.startswith(e + ".")) for e in layer):
            return i
    return None


def test_no_import_cycles():
    cycles = find_cycles(import_graph(ROOT, local=True))
    assert not cycles, "import cycles (function-local imports included):\n" + "\n".join(cycles)


def test_function_local_imports_defer_only_heavy_modules():
    offenders = function_local_project_imports(ROOT)
    assert not offenders, "function-local imports of light project modules (import them at the top):\n" + "\n".join(
        offenders
    )


def test_rayexp_layers():
    graph = import_graph(ROOT, local=True)
    layer = {m: rayexp_layer(m) for m in sorted(graph) if m.split(".")[0] == "rayexp"}
    problems = [f"{m}: declare its layer in RAYEXP_LAYERS" for m, i in layer.items() if i is None]
    problems += [  # an undeclared module is already reported above
        f"{m} (layer {i}) imports {t} (layer {layer[t]})"
        for m, i in layer.items()
        for t in sorted(graph[m])
        if i is not None and layer.get(t) is not None and layer[t] > i
    ]
    assert not problems, "rayexp layering violations:\n" + "\n".join(problems)


def test_graph_builder_sees_only_import_time_edges(tmp_path):
    files = {
        "rayexp/__init__.py": "",
        "rayexp/a.py": (
            "from typing import TYPE_CHECKING\nimport os\nfrom . import b\nfrom rayexp.pkg import c\n"
            "if TYPE_CHECKING:\n    from rayexp import d\ntry:\n    import rayexp.e\nexcept ImportError:\n    pass\n"
            "def f():\n    from rayexp import d\nclass K:\n    import rayexp.d\n"
        ),
        "rayexp/b.py": "from .a import something\n",
        "rayexp/d.py": "",
        "rayexp/e.py": "",
        "rayexp/pkg/__init__.py": "",
        "rayexp/pkg/c.py": "from .. import e\nimport rayexp.pkg.helper\n",  # helper does not exist yet
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["rayexp.a"] == {"rayexp.b", "rayexp.pkg", "rayexp.pkg.c", "rayexp.e"}
    assert graph["rayexp.pkg.c"] == {"rayexp.e"}  # own package is already running; helper is missing
    assert find_cycles(graph) == ["rayexp.a -> rayexp.b -> rayexp.a"]
    assert function_local_project_imports(tmp_path) == ["rayexp/a.py:12 rayexp.d"]
