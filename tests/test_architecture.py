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


def kind_gaps(runners, plans, constructors, commands: dict[str, set[str]]) -> list[str]:
    """What a job kind declared in jobs.spec.KINDS still lacks: sizing (planner/plan/kinds.py), a campaign
    constructor (planner/plan/campaigns.py, `<kind>_job`), a command in each CLI group (`planner plan KIND`,
    `planner launch KIND`); and sizing for a kind no runner declares."""
    problems = []
    for kind in runners:
        if kind not in plans:
            problems.append(f"{kind}: no sizing entry in planner.plan.kinds.KINDS")
        if not callable(getattr(constructors, kind.replace("-", "_") + "_job", None)):
            problems.append(f"{kind}: no constructor planner.plan.campaigns.{kind.replace('-', '_')}_job")
        problems += [f"{kind}: no `planner {group} {kind}` command" for group, names in commands.items()
                     if kind not in names]
    problems += [f"{kind}: sized in planner.plan.kinds but not declared in jobs.spec.KINDS"
                 for kind in plans if kind not in runners]
    return problems


def cli_commands() -> dict[str, set[str]]:
    import typer

    from planner.interface.cli import app

    root = typer.main.get_command(app)
    return {group: set(root.commands[group].commands) for group in ("plan", "launch")}


def test_every_job_kind_has_sizing_a_campaign_constructor_and_cli_commands():
    from jobs.spec import KINDS as RUNNERS
    from planner.plan import campaigns
    from planner.plan.kinds import KINDS as PLANS

    assert kind_gaps(RUNNERS, PLANS, campaigns, cli_commands()) == []


def test_a_missing_piece_of_a_job_kind_is_caught():
    """Each way of half-declaring a kind is reported: the check can fail (the planted kind's name is one no real kind
    will take)."""
    from types import SimpleNamespace

    from jobs.spec import KINDS as RUNNERS
    from planner.plan import campaigns
    from planner.plan.kinds import KINDS as PLANS

    commands = cli_commands()
    new = dict(RUNNERS) | {"planted-kind": RUNNERS["train-bag"]}
    constructors = SimpleNamespace(**{n: getattr(campaigns, n) for n in dir(campaigns)}, planted_kind_job=lambda: None)
    assert kind_gaps(new, PLANS | {"planted-kind": PLANS["train-bag"]}, constructors,
                     {g: names | {"planted-kind"} for g, names in commands.items()}) == []
    assert kind_gaps(new, PLANS, constructors, {g: names | {"planted-kind"} for g, names in commands.items()}) == [
        "planted-kind: no sizing entry in planner.plan.kinds.KINDS"]
    assert kind_gaps(new, PLANS | {"planted-kind": PLANS["train-bag"]}, campaigns,
                     {g: names | {"planted-kind"} for g, names in commands.items()}) == [
        "planted-kind: no constructor planner.plan.campaigns.planted_kind_job"]
    assert kind_gaps(new, PLANS | {"planted-kind": PLANS["train-bag"]}, constructors,
                     commands | {"launch": commands["launch"] | {"planted-kind"}}) == ["planted-kind: no `planner plan planted-kind` command"]
    assert kind_gaps(RUNNERS, PLANS | {"planted-kind": PLANS["train-bag"]}, campaigns, commands) == [
        "planted-kind: sized in planner.plan.kinds but not declared in jobs.spec.KINDS"]


# ------------------------------------------------------------------ a provider is declared once

def provider_homes(name: str, root: Path = ROOT) -> set[Path]:
    """Where a provider's name may be written: the registry, the provider's own price reader, API client
    and backend, the box's table of how each provider's box ends itself (jobs/boxend.py: the jobs
    package stands alone and cannot read the registry), and SkyPilot's catalog writer (its CSV columns differ
    per cloud; ARCHITECTURE.md, "Adding a provider"). Docs and tests are not scanned."""
    return {root / "pricing" / "providers" / "registry.py", root / "pricing" / "providers" / f"{name}.py",
            root / "pricing" / "providers" / f"{name}_api.py", root / "planner" / "run" / "backends" / f"{name}.py",
            root / "jobs" / "boxend.py", root / "pricing" / "skypilot_catalog.py"}


def docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
            and isinstance(node.body[0].value.value, str)}


def provider_literals(paths, names, root: Path = ROOT) -> list[str]:
    """Each string in code (docstrings aside; f-string parts included) that names a registered provider as
    a value would ("runpod", "--backend vast", "runpod/vms.csv"), and each use of the registry's constant for
    it (`registry.VAST`, `from pricing.providers.registry import VAST`), outside that provider's homes: such a
    branch or list is a second declaration that the next provider would have to find and extend."""
    import re

    found = []
    constants = {name.upper(): name for name in names}
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        skip = docstrings(tree)
        for node in ast.walk(tree):
            used = ([alias.name for alias in node.names] if isinstance(node, ast.ImportFrom)
                    and node.module == "pricing.providers.registry" else [node.attr] if isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name) and node.value.id == "registry" else [])
            found += [f"{path.relative_to(root)}:{node.lineno}: registry.{constant}" for constant in used
                      if constant in constants and path not in provider_homes(constants[constant], root)]
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
                continue
            for name in names:
                if re.search(rf"\b{re.escape(name)}\b", node.value) and path not in provider_homes(name, root):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {name!r} in {node.value[:60]!r}")
    return found


def test_provider_names_live_only_in_their_own_modules_and_the_registry():
    from pricing.providers.registry import NAMES

    assert provider_literals(package_files(), NAMES) == []


@pytest.mark.parametrize("module, line", [
    ("planner/plan/sneaky.py", 'PRIOR = {("vast", True): 0.1}'),
    ("planner/run/sneaky.py", 'def f(o):\n    return o.provider in ("runpod", "vast")'),
    ("planner/interface/cli/sneaky.py", 'HELP = f"--backend runpod or {x}"'),
    ("pricing/providers/vast.py", 'OTHER = "runpod"'),  # a provider's module naming another provider
    ("planner/plan/sneaky.py", "from pricing.providers.registry import VAST"),  # the name by its constant
    ("planner/run/sneaky.py", "def f(o):\n    return o.provider == registry.RUNPOD"),
])
def test_a_provider_literal_outside_its_home_is_caught(tmp_path, module, line):
    """The rule can fail: a planted file naming a provider where it does not live is reported; a docstring
    naming it, and the provider's own module naming itself, are not."""
    target = tmp_path / module
    target.parent.mkdir(parents=True)
    target.write_text(line + "\n")
    assert len(provider_literals([target], ("runpod", "vast"), tmp_path)) >= 1
    quiet = tmp_path / "pricing" / "providers" / "vast_api.py"
    quiet.parent.mkdir(parents=True, exist_ok=True)
    quiet.write_text('"""Talks to runpod and vast."""\nNAME = "vast"\n')
    assert provider_literals([quiet], ("runpod", "vast"), tmp_path) == []
