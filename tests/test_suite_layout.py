"""The test suite's own arrangement: every module that starts Ray runs in the one xdist group."""

import re
from pathlib import Path

from conftest import RAY_MODULES

TESTS = Path(__file__).resolve().parent

#: what starts Ray in a test: an embedded Ray, a sweep in process or through the CLI, RLlib's algorithm,
#: a golden sweep, the GPU benchmark's dry run (its quickstart)
STARTS_RAY = re.compile(
    r"ray\.init\(|start_local_ray\(|run_sweep\(|main\(\[\"run\"|cli\(\"run\"|\"rayexp\", \"run\"|"
    r"golden_sweep\(|train_ppo\(|build_algo\(|bench\(\"--dry-run\""
)


def test_every_module_that_starts_ray_is_in_the_ray_group():
    modules = {p.stem: p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name}
    starts = {name for name, text in modules.items() if STARTS_RAY.search(text)}
    assert starts <= RAY_MODULES, sorted(starts - RAY_MODULES)
    assert RAY_MODULES <= set(modules), sorted(RAY_MODULES - set(modules))  # no stale name


def test_the_pattern_finds_a_sweep_run_through_the_cli():
    assert STARTS_RAY.search('proc = cli("run", str(path), cwd=workdir)')
    assert STARTS_RAY.search('[sys.executable, "-m", "rayexp", "run", str(path)]')
    assert not STARTS_RAY.search('main(["validate", str(file)])')
