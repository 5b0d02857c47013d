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
