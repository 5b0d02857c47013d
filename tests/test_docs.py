"""README and docs/ stay usable after moves: every relative link and image resolves, CI runs exactly the
README's test command, and every study's results file is linked from README."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown():
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_relative_links_and_images_resolve():
    broken = [
        f"{md.relative_to(ROOT)} -> {target}"
        for md in _markdown()
        for target in LINK.findall(md.read_text())
        if "://" not in target and not (md.parent / target).exists()
    ]
    assert not broken, broken


def test_ci_runs_the_readmes_test_command():
    readme = ROOT.joinpath("README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.DOTALL)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == test_command


def test_every_results_file_is_linked_from_the_readme():
    readme = ROOT.joinpath("README.md").read_text()
    linked = {t for t in LINK.findall(readme) if t.startswith("docs/results/") and t.endswith(".md")}
    present = {f"docs/results/{p.name}" for p in (ROOT / "docs" / "results").glob("*.md")}
    assert present and present <= linked, sorted(present - linked)
