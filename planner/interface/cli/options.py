"""The options several commands share, declared once as Typer `Annotated` aliases, and how their values
resolve: the flag, else the project's planner.toml, else the built-in default (config.JOB_KEYS).

A command lists the aliases it takes in its own signature (so `--help`, grep and type checkers see every
flag) and resolves them with `Flags(ctx.params)`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NamedTuple, Optional

import typer

from jobs import storage
from planner.config import CHOICES, INT_BOUNDS, JOB_KEYS, Project
from planner.interface.cli.common import fail, project, settings
from planner.run.launching import JobOptions, gpu_pin, provider_pin
from planner.run.pricebook import PROVIDERS

UNSET = {"spot": "either", "method": "the recipe's for the model"}  # what an unset key means, for --help


def job_help(key: str, text: str | None = None) -> str:
    """The help of a flag that is also a planner.toml key: its meaning and where its default comes from."""
    kind, default, meaning = JOB_KEYS[key]
    shown = UNSET.get(key, "none") if default is None else default
    return f"{text or meaning[0].upper() + meaning[1:] + '.'} (default: planner.toml, else {shown})"


def finite(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """A float option's parser that refuses nan and inf (a NaN passes every range comparison) and values
    outside [low, high]: click reports it as a usage error, exit 2."""
    def parse(text: str) -> float:
        try:
            number = float(text)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if not math.isfinite(number):
            raise typer.BadParameter(f"{text!r} is not a finite number")
        if low is not None and number < low or high is not None and number > high:
            raise typer.BadParameter(f"{text} is not in the range [{low if low is not None else '-inf'}, "
                                     f"{high if high is not None else 'inf'}]")
        return number

    parse.__name__ = "finite float"  # what --help shows as the option's type
    return parse


Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

# the job keys (planner.toml's JOB_KEYS): plan/launch, `planner init` and `planner config show` take them
Model = Annotated[Optional[str], typer.Option("--model", help=job_help("model"))]
Data = Annotated[Optional[str], typer.Option("--data", help=job_help("data"))]
Eval = Annotated[Optional[str], typer.Option("--eval", help=job_help("eval"))]
Encode = Annotated[Optional[str], typer.Option("--encode", help=job_help("encode"))]
Method = Annotated[Optional[str], typer.Option("--method", help=job_help("method", "full | lora."))]
# out of config.INT_BOUNDS, click refuses an integer as a usage error (exit 2) before anything is planned
Seed = Annotated[Optional[int], typer.Option("--seed", min=INT_BOUNDS["seed"][0], max=INT_BOUNDS["seed"][1],
                                             help=job_help("seed"))]
Epochs = Annotated[Optional[int], typer.Option("--epochs", min=INT_BOUNDS["epochs"][0], max=INT_BOUNDS["epochs"][1],
                                               help=job_help("epochs", "Training epochs."))]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=INT_BOUNDS["batch_size"][0],
                                                  max=INT_BOUNDS["batch_size"][1],
                                                  help=job_help("batch_size", "Training batch size."))]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", min=INT_BOUNDS["max_steps"][0],
                                                 max=INT_BOUNDS["max_steps"][1], help=job_help("max_steps"))]
Spot = Annotated[Optional[bool], typer.Option("--spot/--no-spot", help=job_help("spot",
                                                                                 "Only spot, or only on-demand."))]
MaxPrice = Annotated[Optional[float], typer.Option("--max-price-per-hour", parser=finite(), help=job_help(
    "max_price_per_hour", "Cap in USD per instance-hour."))]
Budget = Annotated[Optional[float], typer.Option("--budget", parser=finite(), help=job_help(
    "budget", "Budget in USD for this job (a campaign: for all its jobs)."))]

# planning
Gpu = Annotated[Optional[str], typer.Option("--gpu", help="Pin the hardware: GPU model[:count per instance], e.g. "
                                            "H100-SXM:1 or 'RTX 4090:2' (offers of other GPUs lose, with the reason).")]
Provider = Annotated[Optional[str], typer.Option("--provider", help=f"Pin the provider: {', '.join(PROVIDERS)} "
                                                                    "(or local).")]
Top = Annotated[int, typer.Option("--top", help="Offers to show per job.")]
AllowStale = Annotated[bool, typer.Option("--allow-stale", help="Plan with prices older than PLANNER_MAX_PRICE_AGE.")]


class LaunchOnly(NamedTuple):
    """The flags only `planner launch KIND` acts on; `planner plan KIND` accepts them without showing them."""

    backend: object
    yes: object
    wait: object
    dry_run: object
    ignore_balance: object


def launch_only(hidden: bool) -> LaunchOnly:
    return LaunchOnly(
        Annotated[Optional[str], typer.Option(
            "--backend", hidden=hidden, help=job_help("backend", f"{' | '.join(CHOICES['backend'])} (cloud: "
                                                       "needs its key or extra, PLANNER_JOBS_INSTALL and "
                                                       "PLANNER_STORAGE_URI)."))],
        Annotated[bool, typer.Option("--yes", "-y", hidden=hidden, help="Launch without asking.")],
        Annotated[bool, typer.Option("--wait", hidden=hidden, help="Supervise until the jobs end (exit 1 if one "
                                                                   "fails).")],
        Annotated[bool, typer.Option("--dry-run", hidden=hidden, help="Show the plan and stop (with --backend "
                                     "skypilot, also the SkyPilot task YAML it would submit).")],
        Annotated[bool, typer.Option("--ignore-balance", hidden=hidden, help="Launch even where a provider account's "
                                     "balance cannot cover the worst case this launch reserves there.")])


PROJECT_KEY = {"budget_usd": "budget", "input_uri": "encode", "replay_data": "data"}  # parameter -> planner.toml key


def resolve(ctx: typer.Context) -> Flags:
    """The command's options (`ctx.params`) against the project file. A bad project or config file is the
    first thing said, before any option is checked."""
    flags = Flags(ctx.params, project())
    settings()
    return flags


class Flags:
    """One command's options as given, resolved against the project file."""

    def __init__(self, given: dict, where: Project):
        self.given, self.project = given, where

    def __getitem__(self, name: str):
        """The flag if given, else the project file's value, else the built-in default."""
        flag = self.given[name]
        key = PROJECT_KEY.get(name, name)
        if flag is not None or key not in JOB_KEYS:
            return flag
        if key in self.project.jobs:
            return self.project.jobs[key]
        return JOB_KEYS[key][1]

    def required(self, name: str, option: str, init_flag: str | None = None):
        """The value, or exit 2 naming the option and how to make it permanent for this project."""
        value = self[name]
        if value is None:
            key = PROJECT_KEY.get(name, name)
            where = f" ({self.project.path} has no {key})" if self.project.path else ""
            fail(f"missing option {option}{where}: pass {option} URI, or make it this project's default: "
                 f"planner init {init_flag or option} URI")
        return value

    def job_options(self) -> JobOptions:
        backend, max_price, budget_usd = self["backend"], self["max_price_per_hour"], self["budget_usd"]
        if backend not in CHOICES["backend"]:
            fail(f"--backend {backend}: choose {', '.join(CHOICES['backend'][:-1])} or {CHOICES['backend'][-1]}")
        for flag, value in (("--max-price-per-hour", max_price), ("--budget", budget_usd)):
            if value is not None and not (math.isfinite(value) and value > 0):
                fail(f"{flag} {value}: --max-price-per-hour and --budget must be positive, finite numbers")
        spot = self["spot"]
        try:
            gpu, count = gpu_pin(self["gpu"])
        except ValueError as exc:
            fail(f"--gpu {exc}")
        try:
            provider = provider_pin(self["provider"])
        except ValueError as exc:
            fail(f"--provider {exc}")
        return JobOptions(backend=backend, spot="any" if spot is None else ("spot" if spot else "on-demand"),
                          max_price_per_hour=max_price, budget_usd=budget_usd, gpu=gpu, gpu_count=count,
                          provider=provider)

    def train(self) -> tuple[str | None, dict]:
        """(method, extra training parameters), checked."""
        method = self["method"]
        if method is not None and method not in CHOICES["method"]:
            fail(f"--method must be full or lora, got {method}")
        extra = {key: self[key] for key in ("epochs", "batch_size", "max_steps")}  # bounded: config.INT_BOUNDS
        return method, {k: v for k, v in extra.items() if v is not None}


def floats(text: str, flag: str) -> list[float]:
    """Comma-separated finite numbers (`--weights 0.2,0.4`)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{flag} takes comma-separated numbers, e.g. 0.2,0.4,0.6")
    if not all(math.isfinite(v) for v in values):
        fail(f"{flag} {text}: every number must be finite")
    return values


def fraction(value: float, flag: str) -> float:
    if not 0 < value <= 1:  # NaN fails this too
        fail(f"{flag} must be in (0, 1], got {value}")
    return value


def local_input(value: str | None, option: str, *, model: bool = False) -> str | None:
    """A local path that does not exist is a usage error (exit 2); a path is made absolute, since jobs run
    elsewhere. Remote URIs pass as given: what cannot be read from here is estimated from a stated
    assumption. A model that looks like a hub id (org/name) is not a path."""
    if value is None or storage.is_remote(value):
        return value
    try:
        if model and not value.startswith((".", "/", "~", "file://")) and not Path(value).exists():
            return value
        path = storage.local_path(value).expanduser()
        exists = path.exists()
    except OSError as exc:  # a name longer than the file system allows, say
        fail(f"{option} {value[:80]}...: not a usable path ({exc.strerror})")
    if not exists:
        fail(f"{option} {value}: no such file or directory (from {Path.cwd()})")
    return str(path.resolve())
