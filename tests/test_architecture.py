"""The house stays as drawn (ARCHITECTURE.md): imports only point down, and the job-kind tables agree.

    interface -> run -> plan -> {config, records} -> pricing ; jobs stands alone (planner may use its
    torch-free modules). An AST walk over every module, imports inside functions included.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package prefix -> prefixes it must never import
FORBIDDEN = {
    "jobs": ("planner", "pricing", "sqlalchemy", "pydantic", "fastapi", "typer"),
    "pricing": ("planner",),
    "planner.config": ("planner.plan", "planner.run", "planner.interface"),
    "planner.records": ("planner.plan", "planner.run", "planner.interface"),
    "planner.plan": ("planner.run", "planner.interface"),
    "planner.run": ("planner.interface",),
}
TORCH_FREE = ("planner", "pricing")  # the planner never imports torch, not even lazily


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, list[str]]]:
    """Each import statement: its line and the modules it may load (`from a import b` may load a.b)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]))
    return found


def violations(paths, root: Path = ROOT) -> list[str]:
    problems = []
    for path in paths:
        name = module_name(path, root)
        rules = [banned for owner, banned in FORBIDDEN.items() if name == owner or name.startswith(owner + ".")]
        if name.split(".")[0] in TORCH_FREE:
            rules.append(("torch",))
        for lineno, targets in imports_of(path):
            hits = [t for t in targets for banned in rules for b in banned if t == b or t.startswith(b + ".")]
            if hits:
                problems.append(f"{path.relative_to(root)}:{lineno}: {name} imports {hits[-1]}")
    return problems


def package_files() -> list[Path]:
    return sorted(p for pkg in ("jobs", "pricing", "planner") for p in (ROOT / pkg).rglob("*.py"))


def test_imports_point_down():
    assert violations(package_files()) == []


@pytest.mark.parametrize("module, line", [
    ("planner/plan/sneaky.py", "from planner.run.supervisor import Supervisor"),
    ("planner/run/sneaky.py", "def f():\n    from planner.interface import views"),
    ("pricing/sneaky.py", "import planner.records"),
    ("jobs/sneaky.py", "from pricing import gpus"),
    ("planner/plan/sneaky_torch.py", "def f():\n    import torch"),
])
def test_a_forbidden_import_is_caught(tmp_path, module, line):
    """The rule can fail: the same walk over a planted file reports it."""
    target = tmp_path / module
    target.parent.mkdir(parents=True)
    target.write_text(line + "\n")
    assert len(violations([target], tmp_path)) == 1


def test_every_job_kind_has_a_runner_and_a_plan():
    from jobs.spec import KINDS as RUNNERS
    from planner.plan.kinds import KINDS as PLANS

    assert set(PLANS) == set(RUNNERS)
