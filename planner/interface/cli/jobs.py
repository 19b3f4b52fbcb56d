"""`planner plan`, `planner launch`, `planner jobs` and `planner budget`: thin commands over
planner.plan.plans, planner.run.launching, planner.plan.campaigns and planner.plan.budget."""
from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from jobs import storage
from planner.config import CHOICES as JOB_CHOICES, JOB_KEYS, Project
from planner.plan import budget, campaigns
from planner.plan.choose import Choice
from planner.interface.cli.common import JsonOpt, app, emit_json, err, fail, out, project, sessions, settings
from planner.plan.estimate import EstimateError
from planner.interface import views
from planner.plan.campaigns import CampaignPlan, NewJob
from planner.run.launching import (
    JobOptions, add_jobs, attempts_of, build_backends, build_supervisor, cloud_problem, run_until_final,
    stage_for_cloud,
)
from planner.run.inputs import InputError
from planner.plan.plans import book_offers, choice_summary, limits_for, plan_job
from planner.records import FINAL_STATES, Campaign, Job
from planner.run.pricebook import PROVIDERS
from pricing import gpus
from pricing.db import utcnow

plan_app = typer.Typer(help="What a job needs and which offer finishes it cheapest; launches nothing.",
                       no_args_is_help=True)
launch_app = typer.Typer(help="Plan a job, then launch it and see it through interruptions.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs and campaigns: list, show, logs, cancel, and the supervisor's tick.",
                       no_args_is_help=True)
budget_app = typer.Typer(help="The global monthly budget.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(launch_app, name="launch")
app.add_typer(jobs_app, name="jobs")
app.add_typer(budget_app, name="budget")

TopOpt = typer.Option(5, "--top", help="Offers to show per job.")
StaleOpt = typer.Option(False, "--allow-stale", help="Plan with prices older than PLANNER_MAX_PRICE_AGE.")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{flag} takes comma-separated numbers, e.g. 0.2,0.4,0.6")


# ------------------------------------------------------------------------------------ planning

def _plans(plan: CampaignPlan, options: JobOptions, allow_stale: bool) -> list[tuple[NewJob, Choice | str]]:
    cfg = settings()
    results = []
    shapes = plan.model_shapes()
    with sessions(cfg)() as session:
        offers = book_offers(session)
        for item in plan.jobs:
            probe = Job(id=item.spec.job_id, spot=options.spot, max_price_per_hour=options.max_price_per_hour,
                        budget_usd=options.budget_usd, pin_gpu=options.gpu, pin_gpu_count=options.gpu_count,
                        pin_provider=options.provider)
            try:
                choice = plan_job(session, item.spec, limits_for(probe, cfg, session, allow_stale=allow_stale), offers,
                                  utcnow(), shapes=shapes)
            except EstimateError as exc:
                fail(str(exc))
            results.append((item, choice))
    return results


def _render_plan(plans: list[tuple[NewJob, Choice]], top: int) -> float:
    total = 0.0
    for item, choice in plans:
        needs = choice.needs
        parts = ", ".join(f"{k} {v:.1f}" for k, v in needs.breakdown.items())
        out.print(f"[bold]{item.name}[/] ({item.spec.job_id}): needs {needs.vram_gb:.1f} GB VRAM per GPU ({parts}), "
                  f"{needs.disk_gb:.0f} GB disk, " + (f"{needs.flops / 1e12:,.3g} TFLOP" if needs.flops else
                                                f"{needs.io_bytes / 1e9:,.3g} GB to stream"), highlight=False)
        for note in needs.notes:
            out.print(f"  note: {note}", highlight=False)
        pinned = _pinned_out(choice)
        if pinned:
            out.print(f"  pinned: {pinned}", highlight=False)
        if choice.winner is None:
            out.print(f"  [yellow]no offer:[/] {choice.explain_empty()}", highlight=False)
            continue
        total += choice.winner.expected_usd
        table = Table(show_edge=False, pad_edge=False)
        chunked = bool(needs.sequences_per_step)  # train-bag: the gradient-cache chunk chosen for each card
        for column in ("#", "provider", "GPU", "VRAM", "tier", "spot", *(("chunk",) if chunked else ()), "$/h",
                       "work h", "expected $", "worst $", "why not"):
            table.add_column(column, justify="right" if column in ("VRAM", "chunk", "$/h", "work h", "expected $",
                                                                   "worst $") else "left")
        for rank, c in enumerate(choice.ranked[:top], start=1):
            chunk = (str(c.mini_batch) if c.mini_batch else "-",) if chunked else ()
            table.add_row(str(rank), c.offer.provider, f"{c.offer.gpu_count}x {c.offer.gpu_model}",
                          f"{c.offer.vram_gb:.0f}", c.offer.tier, "spot" if c.spot else "on-demand", *chunk,
                          f"{c.usd_per_hour:.3f}", f"{c.hours:.3g}", f"{c.expected_usd:.2f}",
                          f"{c.worst_case_usd:.2f}", c.why_lost or "best")
        out.print(table)
    return total


PIN_REASONS = ("other GPU", "other GPU count", "provider excluded")


def _pinned_out(choice: Choice) -> str:
    """How many offers the --gpu/--provider pins left out, by reason, with an example of each."""
    counts: dict[str, list] = {}
    for item in choice.rejected:
        key = item.reason.split(":")[0]
        if key in PIN_REASONS:
            counts.setdefault(key, []).append(item.reason)
    return "; ".join(f"{len(reasons)} offers left out as {key} (e.g. {reasons[0].split(': ', 1)[1]})"
                     for key, reasons in counts.items())


def _show_plan(plan: CampaignPlan, options: JobOptions, top: int, allow_stale: bool, as_json: bool,
               skypilot_tasks: bool = False) -> None:
    plans = _plans(plan, options, allow_stale)
    tasks = _skypilot_tasks(plans) if skypilot_tasks else None
    if as_json:
        expected = sum(c.winner.expected_usd for _, c in plans if c.winner)
        jobs = [choice_summary(i.spec, i.name, c, top) for i, c in plans]
        for job, (task, problem) in zip(jobs, tasks or ()):
            job.update(skypilot_task_yaml=task, skypilot_task_problem=problem)
        emit_json({"kind": plan.kind, "jobs": jobs, "expected_total_usd": expected})
        return
    total = _render_plan(plans, top)
    if len(plans) > 1:
        out.print(f"[bold]campaign total[/], expected on the winning offers: ${total:.2f}", highlight=False)
    for (item, _), (task, problem) in zip(plans, tasks or ()):
        if task is None:
            out.print(f"[yellow]no SkyPilot task[/] for {item.name} ({item.spec.job_id}): {escape(problem)}",
                      highlight=False)
            continue
        out.print(f"[bold]SkyPilot task[/] for {item.name} ({item.spec.job_id}), as `--backend skypilot` would "
                  "submit it on the winning offer:", highlight=False)
        typer.echo(task, nl=False)  # verbatim: no markup, no wrapping


def _skypilot_tasks(plans: list[tuple[NewJob, Choice]]) -> list[tuple[str | None, str | None]]:
    """For `launch --backend skypilot --dry-run`: each job's SkyPilot task YAML as the launch would submit it
    on its winning offer (inputs at the URIs the launch would upload them to; nothing uploaded, SkyPilot not
    needed), else None and why not."""
    from planner.run.backends.base import BackendError
    from planner.run.launching import skypilot_task_yaml

    cfg = settings()
    try:
        staged, _ = stage_for_cloud(cfg, "skypilot", [item for item, _ in plans], upload_files=False)
    except InputError as exc:
        return [(None, str(exc))] * len(plans)
    tasks: list[tuple[str | None, str | None]] = []
    for item, (_, choice) in zip(staged, plans):
        try:
            tasks.append((skypilot_task_yaml(cfg, item.spec, choice), None))
        except BackendError as exc:
            tasks.append((None, str(exc)))
    return tasks


# ------------------------------------------------------------------------------------ launching

def _submit(plan: CampaignPlan, options: JobOptions, *, top: int, allow_stale: bool, yes: bool, wait: bool,
            dry_run: bool, as_json: bool) -> None:
    if not as_json or dry_run:
        _show_plan(plan, options, top, allow_stale, as_json, skypilot_tasks=dry_run and options.backend == "skypilot")
    if dry_run:
        return
    cfg = settings()
    problem = cloud_problem(cfg, options.backend, [item.spec for item in plan.jobs])
    if problem:
        fail(problem)
    try:
        plan.jobs, uploads = stage_for_cloud(cfg, options.backend, plan.jobs)
    except InputError as exc:
        fail(str(exc))
    except OSError as exc:  # the store refused or is unreachable: its message names the bucket, not a key
        fail(f"cannot upload the inputs to {cfg.storage_uri}: {' '.join(str(exc).split())[:300]}", code=1)
    for item in uploads:
        err.print(f"input {item.path} {'is already at' if item.skipped else 'uploaded to'} {item.uri}",
                  highlight=False)
    if options.backend == "local":
        _warn_local(cfg, plan)
    if not as_json:
        usable = sorted(b for b in build_backends(cfg) if b == options.backend or options.backend == "auto")
        out.print(f"runs on: {', '.join(usable)}" + (" (the cheapest to finish, re-chosen at each relaunch)"
                                                    if len(usable) > 1 else ""), highlight=False)
    if not yes:
        if not sys.stdin.isatty():
            fail("not a terminal: pass --yes to launch without the confirmation prompt")
        if not typer.confirm(f"launch {len(plan.jobs)} job(s)?"):
            raise typer.Exit(1)
    sessionmaker = sessions(cfg)
    with sessionmaker() as session:
        campaign = None
        if len(plan.jobs) > 1:
            import json

            campaign = Campaign(id=campaigns.new_id(plan.kind), kind=plan.kind, params=json.dumps(plan.params),
                                budget_usd=options.budget_usd)
        rows = add_jobs(session, plan.jobs, options, campaign)
        ids = [row.id for row in rows]
        campaign_id = campaign.id if campaign else None
    if as_json and not wait:
        emit_json({"campaign": campaign_id, "jobs": ids})
    elif not as_json:
        out.print(f"launched {campaign_id or ids[0]}: follow it with `planner jobs show {campaign_id or ids[0]}`"
                  + ("" if wait else " (`planner serve` or `planner jobs tick` supervises it)"), highlight=False)
    if wait:
        states = _supervise(cfg, sessionmaker, ids, quiet=as_json)
        if as_json:
            emit_json({"campaign": campaign_id, "jobs": states})
        raise typer.Exit(0 if all(s == "succeeded" for s in states.values()) else 1)


def _warn_local(cfg, plan: CampaignPlan) -> None:
    """--backend local is obeyed; say so when a job is estimated to take long or not fit here."""
    from planner.plan.plans import local_warning
    from planner.run.backends.local import local_offer

    offer, shapes = local_offer(cfg.local_usd_per_hour, cfg.local_gpus), plan.model_shapes()
    with sessions(cfg)() as session:
        for item in plan.jobs:
            warning = local_warning(session, item.spec, offer, cfg, shapes)
            if warning:
                err.print(f"warning: {warning}", highlight=False)


def _supervise(cfg, sessionmaker, ids: list[str], quiet: bool = False) -> dict[str, str]:
    from planner.interface.cli.progress import watch

    supervisor = build_supervisor(cfg, sessionmaker)
    try:
        with watch(err, sessionmaker, ids, quiet=quiet) as on_tick:  # live table on a terminal, lines when piped
            return run_until_final(supervisor, ids, interval_s=min(cfg.poll_interval_s, 2.0), on_tick=on_tick)
    except KeyboardInterrupt:
        err.print("stopped watching; the jobs keep running. `planner jobs tick` or `planner serve` supervises them")
        raise typer.Exit(130)


# ------------------------------------------------------------------------------------ shared options
# Every `plan KIND` / `launch KIND` command takes the same run options, and the training kinds the same
# training options. They are defined once here; a command lists the groups it takes and receives one
# `Opts`, which resolves each value as: the flag, else the project's planner.toml, else the built-in
# default (config.JOB_KEYS). Options whose project key differs from the parameter name say so.

_PROJECT = "(default: planner.toml, else {default})"


def _opt(key: str | None, *decls: str, help: str, hidden: bool = False, default=None):
    if key is not None:
        builtin = JOB_KEYS[key][1]
        unset = {"spot": "either", "method": "the recipe's for the model"}.get(key, "none")
        help = f"{help} " + _PROJECT.format(default=unset if builtin is None else builtin)
    return typer.Option(default, *decls, help=help, hidden=hidden)


def _run_options(planning: bool) -> list[tuple[str, object, object]]:
    launch_only = dict(hidden=planning)
    return [
        ("spot", Optional[bool], _opt("spot", "--spot/--no-spot", help="Only spot, or only on-demand.")),
        ("max_price_per_hour", Optional[float],
         _opt("max_price_per_hour", "--max-price-per-hour", help="Cap in USD per instance-hour.")),
        ("budget_usd", Optional[float],
         _opt("budget", "--budget", help="Budget in USD for this job (a campaign: for all its jobs).")),
        ("gpu", Optional[str], _opt(None, "--gpu", help="Pin the hardware: GPU model[:count per instance], "
                                    "e.g. H100-SXM:1 or 'RTX 4090:2' (offers of other GPUs lose, with the reason).")),
        ("provider", Optional[str], _opt(None, "--provider", help="Pin the provider: runpod, vast (or local).")),
        ("top", int, TopOpt),
        ("allow_stale", bool, StaleOpt),
        ("backend", Optional[str], _opt("backend", "--backend", help="auto | local | runpod | vast | skypilot "
                                        "(cloud: needs its key or extra, PLANNER_JOBS_INSTALL and "
                                        "PLANNER_STORAGE_URI).", **launch_only)),
        ("yes", bool, _opt(None, "--yes", "-y", help="Launch without asking.", default=False, **launch_only)),
        ("wait", bool, _opt(None, "--wait", help="Supervise until the jobs end (exit 1 if one fails).",
                            default=False, **launch_only)),
        ("dry_run", bool, _opt(None, "--dry-run", help="Show the plan and stop (with --backend skypilot, also the "
                               "SkyPilot task YAML it would submit).", default=False, **launch_only)),
        ("as_json", bool, JsonOpt),
    ]


def _train_options(with_model: bool = True) -> list[tuple[str, object, object]]:
    model = [("model", Optional[str], _opt("model", "--model", help="Base model: directory, fsspec URI or hub id."))]
    return (model if with_model else []) + [
        ("seed", Optional[int], _opt("seed", "--seed", help="Sampling and training seed.")),
        ("method", Optional[str], _opt("method", "--method", help="full | lora")),
        ("epochs", Optional[int], _opt("epochs", "--epochs", help="Training epochs.")),
        ("batch_size", Optional[int], _opt("batch_size", "--batch-size", help="Training batch size.")),
        ("max_steps", Optional[int], _opt("max_steps", "--max-steps", help="Stop training after this many steps.")),
    ]


PROJECT_KEY = {"budget_usd": "budget"}  # option parameter -> planner.toml key, where they differ


class Opts:
    """The shared options of one command, resolved against the project file (see _opt)."""

    def __init__(self, flags: dict, project: Project):
        self.flags, self.project = flags, project

    def __getattr__(self, name: str):
        flags = self.__dict__["flags"]
        if name not in flags:
            raise AttributeError(name)
        return self.value(name, flags[name])

    def value(self, name: str, flag):
        """A flag if given, else the project file's value, else the built-in default."""
        key = PROJECT_KEY.get(name, name)
        if flag is not None or key not in JOB_KEYS:
            return flag
        if key in self.project.jobs:
            return self.project.jobs[key]
        return JOB_KEYS[key][1]

    def required(self, name: str, flag, option: str, init_flag: str | None = None):
        """The value, or exit 2 naming the option and how to make it permanent for this project."""
        value = self.value(name, flag)
        if value is None:
            where = f" ({self.project.path} has no {name})" if self.project.path else ""
            fail(f"missing option {option}{where}: pass {option} URI, or make it this project's default: "
                 f"planner init {init_flag or option} URI")
        return value

    def job_options(self) -> JobOptions:
        backend, max_price, budget_usd = self.backend, self.max_price_per_hour, self.budget_usd
        if backend not in JOB_CHOICES["backend"]:
            fail(f"--backend {backend}: choose auto, local, runpod, vast or skypilot")
        if max_price is not None and max_price <= 0 or budget_usd is not None and budget_usd <= 0:
            fail("--max-price-per-hour and --budget must be positive")
        spot = self.spot
        gpu, count = _gpu_pin(self.gpu)
        if self.provider is not None and self.provider not in (*PROVIDERS, "local"):
            fail(f"--provider {self.provider}: choose {', '.join(PROVIDERS)} or local")
        return JobOptions(backend=backend, spot="any" if spot is None else ("spot" if spot else "on-demand"),
                          max_price_per_hour=max_price, budget_usd=budget_usd, gpu=gpu, gpu_count=count,
                          provider=self.provider)

    def train(self) -> tuple[str, dict]:
        """(method, extra training parameters), checked."""
        if self.method is not None and self.method not in JOB_CHOICES["method"]:
            fail(f"--method must be full or lora, got {self.method}")
        extra = {k: getattr(self, k) for k in ("epochs", "batch_size", "max_steps")}
        for key, value in extra.items():
            if value is not None and value <= 0:
                fail(f"--{key.replace('_', '-')} must be positive, got {value}")
        return self.method, {k: v for k, v in extra.items() if v is not None}


def _gpu_pin(text: str | None) -> tuple[str | None, int | None]:
    """`--gpu NAME[:COUNT]` (SkyPilot's --gpus H100:1) as (canonical model, count)."""
    if not text:
        return None, None
    name, _, count = text.rpartition(":") if ":" in text else (text, "", "")
    if count and not count.isdigit() or count == "0" or not name.strip():
        fail(f"--gpu {text}: give a GPU model and optionally a count, e.g. H100-SXM or H100-SXM:2")
    model = views.canonical_gpu(name.strip())
    if gpus.resolve(name.strip()) is None:
        fail(f"--gpu {name.strip()}: not a GPU this planner knows; `planner prices show` lists the models")
    return model, int(count) if count else None


def _local_input(value: str | None, option: str, *, model: bool = False) -> str | None:
    """A local path that does not exist is a usage error (exit 2); a path is made absolute, since jobs run
    elsewhere. Remote URIs pass as given: what cannot be read from here is estimated from a stated
    assumption. A model that looks like a hub id (org/name) is not a path."""
    if value is None or storage.is_remote(value):
        return value
    if model and not value.startswith((".", "/", "~", "file://")) and not Path(value).exists():
        return value
    path = storage.local_path(value).expanduser()
    if not path.exists():
        fail(f"{option} {value}: no such file or directory (from {Path.cwd()})")
    return str(path.resolve())


def _with_options(*groups: list[tuple[str, object, object]]):
    """Add the shared options to a command's signature; the command gets them as `o: Opts`."""
    shared = [item for group in groups for item in group]

    def decorate(fn):
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.name != "o"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                 for name, annotation, option in shared]

        @functools.wraps(fn)
        def command(**kwargs):
            flags = {name: kwargs.pop(name) for name, _, _ in shared}
            opts = Opts(flags, project())
            settings()  # a bad config file is the first thing said, before any option is checked
            return fn(**kwargs, o=opts)

        command.__signature__ = signature.replace(parameters=own + extra)
        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "o"} | \
            {name: annotation for name, annotation, _ in shared}
        return command

    return decorate


def _define_commands(target: typer.Typer, planning: bool) -> None:
    """The same commands for `plan KIND` and `launch KIND`; launch-only flags are hidden from `plan`."""
    run, train = _run_options(planning), _train_options()

    def dispatch(plan: CampaignPlan, o: Opts) -> None:
        options = o.job_options()
        if planning:
            _show_plan(plan, options, o.top, o.allow_stale, o.as_json)
        else:
            _submit(plan, options, top=o.top, allow_stale=o.allow_stale, yes=o.yes, wait=o.wait,
                    dry_run=o.dry_run, as_json=o.as_json)

    @target.command("train-bag")
    @_with_options(train, run)
    def train_bag(
        fraction: float = typer.Option(..., "--fraction", help="Share of each task to train on, in (0, 1]."),
        data: Optional[str] = _opt("data", "--data", help="Training corpus JSONL (path or fsspec URI)."),
        output: Optional[str] = typer.Option(None, help="Output URI (default: under PLANNER_RUNS_DIR)."),
        checkpoint: Optional[str] = typer.Option(None, help="Checkpoint URI (default: under PLANNER_RUNS_DIR)."),
        o: Opts = None,
    ) -> None:
        """One BOOM bag: fine-tune MODEL on a seeded FRACTION of the corpus."""
        if not 0 < fraction <= 1:
            fail(f"--fraction must be in (0, 1], got {fraction}")
        method, extra = o.train()
        data = _local_input(o.required("data", data, "--data"), "--data")
        job = campaigns.train_bag_job(settings(), model=_local_input(o.model, "--model", model=True), data=data,
                                      fraction=fraction, seed=o.seed, method=method, extra=extra, output=output,
                                      checkpoint=checkpoint)
        dispatch(CampaignPlan("train-bag", job.spec.params, [job]), o)

    @target.command("merge")
    @_with_options(run)
    def merge(
        models: str = typer.Option(..., "--models", help="Comma-separated model directories or URIs."),
        weights: str = typer.Option(..., "--weights", help="Comma-separated positive weights."),
        output: Optional[str] = typer.Option(None), o: Opts = None,
    ) -> None:
        """Multi-SLERP merge of finished bags."""
        names, values = [m for m in models.split(",") if m], _floats(weights, "--weights")
        if len(names) != len(values) or len(names) < 2:
            fail("give at least two --models and exactly one --weights value per model")
        job = campaigns.merge_job(settings(), names, values, (), output)
        dispatch(CampaignPlan("merge", job.spec.params, [job]), o)

    @target.command("encode")
    @_with_options(run)
    def encode(
        model: str = typer.Option(..., "--model", help="The model to encode with: directory or URI."),
        input_uri: Optional[str] = _opt("encode", "--input", help="Corpus to encode (planner.toml: encode)."),
        o: Opts = None,
    ) -> None:
        """Batch-encode a corpus with a model."""
        corpus = _local_input(o.required("encode", input_uri, "--input", "--encode"), "--input")
        job = campaigns.encode_job(settings(), _local_input(model, "--model", model=True), corpus, ())
        dispatch(CampaignPlan("encode", job.spec.params, [job]), o)

    @target.command("bagging")
    @_with_options(train, run)
    def bagging(
        data: Optional[str] = _opt("data", "--data", help="Training corpus JSONL."),
        fractions: str = typer.Option("0.2,0.4,0.6,0.8,1.0", "--fractions"),
        weights: str = typer.Option("0.2,0.4,0.6,0.8,1.0", "--weights"),
        encode_uri: Optional[str] = _opt("encode", "--encode", help="Encode this corpus with the merged model."),
        eval_uri: Optional[str] = _opt("eval", "--eval", help="Evaluate every bag and the merge on this set."),
        o: Opts = None,
    ) -> None:
        """The BOOM campaign: bags in parallel, their merge, then optional encode and evaluation."""
        method, extra = o.train()
        data = _local_input(o.required("data", data, "--data"), "--data")
        try:
            plan = campaigns.bagging(settings(), model=_local_input(o.model, "--model", model=True), data=data,
                                     fractions=_floats(fractions, "--fractions"), weights=_floats(weights, "--weights"),
                                     method=method, seed=o.seed,
                                     encode=_local_input(o.value("encode", encode_uri), "--encode"),
                                     evaluate=_local_input(o.value("eval", eval_uri), "--eval"), train_extra=extra)
        except ValueError as exc:
            fail(str(exc))
        dispatch(plan, o)

    @target.command("incremental")
    @_with_options(_train_options(with_model=False), run)
    def incremental(
        previous: str = typer.Option(..., "--previous", help="The current merged model."),
        new_data: str = typer.Option(..., "--new-data"),
        replay_data: Optional[str] = _opt("data", "--replay-data", help="The old corpus to replay."),
        replay_fraction: float = typer.Option(0.4, "--replay-fraction"),
        weights: str = typer.Option("2.8,4.3", "--weights"), o: Opts = None,
    ) -> None:
        """The incremental stage: train on new data plus replayed old data, merge with the previous model."""
        method, extra = o.train()
        replay = _local_input(o.required("data", replay_data, "--replay-data", "--data"), "--replay-data")
        try:
            plan = campaigns.incremental(settings(), previous=_local_input(previous, "--previous", model=True),
                                         new_data=_local_input(new_data, "--new-data"), replay_data=replay,
                                         replay_fraction=replay_fraction, weights=_floats(weights, "--weights"),
                                         method=method, seed=o.seed, train_extra=extra)
        except ValueError as exc:
            fail(str(exc))
        dispatch(plan, o)


_define_commands(plan_app, planning=True)
_define_commands(launch_app, planning=False)


# ------------------------------------------------------------------------------------ jobs

@jobs_app.command("list")
def jobs_list(all_jobs: bool = typer.Option(False, "--all", help="Include finished jobs."),
              limit: int = typer.Option(50, "--limit"), as_json: bool = JsonOpt) -> None:
    """Jobs, newest first (open ones only unless --all), with each running job's progress and spend."""
    with sessions(settings())() as session:
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if not all_jobs:
            query = query.where(Job.state.not_in(FINAL_STATES))
        rows = [views.job_summary(session, job) for job in session.scalars(query)]
    if as_json:
        emit_json(rows)
        return
    from planner.interface.cli.progress import bar, eta, spend

    table = Table(title="jobs" if all_jobs else "open jobs (--all for finished ones)")
    for column in ("id", "name", "state", "progress", "ETA", "attempts", "$ / budget", "campaign"):
        table.add_column(column, justify="right" if column in ("attempts", "$ / budget", "ETA") else "left")
    for row in rows:
        table.add_row(row["id"], row["name"], row["state"], bar(row, width=16), eta(row), str(row["attempts"]),
                      spend(row), row["campaign"] or "")
    out.print(table)


@jobs_app.command("show")
def jobs_show(ident: str = typer.Argument(..., help="A job id or a campaign id."), as_json: bool = JsonOpt) -> None:
    """A job (or every job of a campaign) with its attempts, progress and dollars against its budget."""
    with sessions(settings())() as session:
        data = views.jobs_view(session, ident)
    if data is None:
        fail(f"no job or campaign {ident}; `planner jobs list --all` lists them")
    if as_json:
        emit_json(data)
        return
    from planner.interface.cli.progress import jobs_table

    for job in data["jobs"]:
        after = f" after {', '.join(job['depends_on'])}" if job["depends_on"] else ""
        out.print(f"[bold]{job['name']}[/] {job['id']}: {job['state']}{after}"
                  + (f" ({job['error'].splitlines()[0]})" if job["error"] else ""), highlight=False)
        for a in job["attempts"]:
            out.print(f"  attempt {a['number']}: {a['provider']} {a['gpu'] or ''} {'spot' if a['spot'] else 'on-demand'} "
                      f"planned ${a['usd_per_hour']:.3f}/h"
                      + (f", billed ${a['billed_usd_per_hour']:.3f}/h" if a.get("billed_usd_per_hour") else "")
                      + f", {a['outcome']}"
                      + (f" exit {a['exit_code']}" if a["exit_code"] is not None else "")
                      + f", ${a['dollars']:.4f}", highlight=False)
        if job["progress"] and job["progress"]["text"]:
            out.print(f"  progress: {job['progress']['text']}", highlight=False)
    if out.is_terminal and any(j["progress"] for j in data["jobs"]):
        out.print(jobs_table(data["jobs"]))
    spent = f"${data['spent_usd']:.4f}" + (f" so far (${data['dollars']:.4f} settled)"
                                          if data["spent_usd"] != data["dollars"] else "")
    out.print(f"[bold]total[/]: {spent}" + (f" of a ${data['budget_usd']:.2f} budget" if data["budget_usd"] else ""),
              highlight=False)


@jobs_app.command("logs")
def jobs_logs(job_id: str = typer.Argument(...), tail: int = typer.Option(100, "--tail", help="Lines to show."),
              follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the job ends."),
              as_json: bool = typer.Option(False, "--json", help="A JSON list of lines (with --follow: one JSON "
                                           "string per line, as JSON lines).")) -> None:
    """The log of a job's latest attempt, as raw lines (never wrapped or styled)."""
    import json

    from planner.run.logs import follow as follow_log
    from planner.run.backends.base import Handle

    cfg = settings()
    sessionmaker = sessions(cfg)
    with sessionmaker() as session:
        attempts = attempts_of(session, job_id)
    if not attempts:
        fail(f"job {job_id} has no attempts yet (or does not exist)")
    backend = build_backends(cfg).get(attempts[-1].backend)
    if backend is None:
        fail(f"the {attempts[-1].backend} backend is not available in this build")
    handle = Handle.from_attempt(attempts[-1])
    if not follow:
        lines = backend.logs(handle, tail=tail).splitlines()
        sys.stdout.write(json.dumps(lines) + "\n" if as_json else "".join(line + "\n" for line in lines))
        return

    def ended() -> bool:  # the attempt's instance is gone, or the supervisor has closed the attempt
        from planner.run.logs import attempt_ended

        with sessionmaker() as session:
            outcome = attempts_of(session, job_id)[-1].outcome
        return outcome not in ("launching", "running") or attempt_ended(backend, handle)

    try:
        for line in follow_log(backend, handle, tail=tail, ended=ended):
            sys.stdout.write((json.dumps(line) if as_json else line) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(130)


@jobs_app.command("cancel")
def jobs_cancel(ident: str = typer.Argument(..., help="A job id or a campaign id."), as_json: bool = JsonOpt) -> None:
    """Cancel a job or a whole campaign: live instances are terminated and their cost settled."""
    from planner.run.launching import cancel_jobs

    cfg = settings()
    cancelled = cancel_jobs(cfg, sessions(cfg), ident)
    if cancelled is None:
        fail(f"no job or campaign {ident}")
    if as_json:
        emit_json({"cancelled": cancelled})
    else:
        out.print(f"cancelled: {', '.join(cancelled) or 'nothing open'}", highlight=False)


@jobs_app.command("tick")
def jobs_tick(as_json: bool = JsonOpt) -> None:
    """One supervisor pass over every open job (for cron; `planner serve` runs it continuously)."""
    cfg = settings()
    report = build_supervisor(cfg, sessions(cfg)).tick()
    data = {"launched": report.launched, "relaunching": report.relaunching, "finished": report.finished,
            "reaped": report.reaped}
    if as_json:
        emit_json(data)
    else:
        for line in report.lines():
            out.print(line, highlight=False)


# ------------------------------------------------------------------------------------ budget

@budget_app.command("show")
def budget_show(as_json: bool = JsonOpt) -> None:
    """The monthly budget, what is committed this month (spent + reserved) and what is left."""
    with sessions(settings())() as session:
        cap, committed = budget.monthly_budget(session), budget.committed(session)
    data = {"monthly_usd": cap, "committed_usd": round(committed, 4),
            "left_usd": None if cap is None else round(cap - committed, 4)}
    if as_json:
        emit_json(data)
    else:
        out.print(f"monthly budget: {'none' if cap is None else f'${cap:.2f}'}; committed this month: "
                  f"${committed:.2f}" + ("" if cap is None else f"; left: ${cap - committed:.2f}"), highlight=False)


@budget_app.command("set")
def budget_set(monthly: str = typer.Option(..., "--monthly", help="USD per calendar month, or 'none'."),
               as_json: bool = JsonOpt) -> None:
    """Set (or remove, with 'none') the global monthly budget."""
    if monthly.lower() == "none":
        value = None
    else:
        try:
            value = float(monthly)
        except ValueError:
            fail(f"--monthly {monthly!r}: give a number of dollars or 'none'")
    with sessions(settings())() as session:
        try:
            budget.set_monthly_budget(session, value)
        except ValueError as exc:
            fail(str(exc))
    if as_json:
        emit_json({"monthly_usd": value})
    else:
        out.print(f"monthly budget: {'none' if value is None else f'${value:.2f}'}", highlight=False)
