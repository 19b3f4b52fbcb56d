"""`planner plan KIND` and `planner launch KIND`: one command per job kind, the same for both (launch-only
flags are accepted but hidden under `plan`), over planner.plan.campaigns, planner.plan.plans and
planner.run.launching.submit."""
# No `from __future__ import annotations`: the commands' annotations name the per-group launch-only
# aliases (options.launch_only), which Typer must see as values, not as strings to look up in globals.
import sys
from dataclasses import replace
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from jobs.protocol import CHECKPOINT_MINUTES
from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, err, fail, out, sessions, settings
from planner.interface.cli.options import Flags, floats, local_input, resolve
from planner.interface.cli.options import fraction as in_unit_interval
from planner.plan import campaigns
from planner.plan.campaigns import CampaignPlan, NewJob
from planner.plan.choose import MEMORY_REJECTIONS, PIN_REJECTIONS, Choice, Rejection
from planner.plan.estimate import EstimateError, StoreUnreachable
from planner.plan.plans import book_offers, choice_summary, plan_job
from planner.run.inputs import InputError, Upload
from planner.run.launching import JobOptions, LaunchError, build_backends, stage_for_cloud, submit
from pricing.db import utcnow

plan_app = typer.Typer(help="What a job needs and which offer finishes it cheapest; launches nothing.",
                       no_args_is_help=True)
launch_app = typer.Typer(help="Plan a job, then launch it and see it through interruptions.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(launch_app, name="launch")


# ------------------------------------------------------------------------------------ planning

def _plans(plan: CampaignPlan, job_options: JobOptions, allow_stale: bool) -> list[tuple[NewJob, Choice]]:
    cfg = settings()
    results = []
    shapes = plan.model_shapes()
    with sessions(cfg)() as session:
        offers = book_offers(session)
        for item in plan.jobs:
            limits = job_options.limits(cfg, session, item.spec.job_id, allow_stale=allow_stale)
            try:
                choice = plan_job(session, item.spec, limits, offers, utcnow(), shapes=shapes)
            except EstimateError as exc:  # a store that is down for now is weather (exit 1), not bad input
                fail(str(exc), 1 if isinstance(exc, StoreUnreachable) else 2)
            results.append((item, choice))
    return results


def _render_plan(plans: list[tuple[NewJob, Choice]], top: int) -> float:
    total = 0.0
    for item, choice in plans:
        needs = choice.needs
        parts = ", ".join(f"{k} {v:.1f}" for k, v in needs.breakdown.items())
        ram = ", ".join(f"{k} {v:.1f}" for k, v in needs.ram_breakdown.items())
        chunked = bool(needs.sequences_per_step)  # train-bag: the gradient-cache chunk chosen for each card
        at = (f" at chunk {needs.fixed_mini_batch}" if needs.fixed_mini_batch else " at the smallest chunk") if chunked else ""
        extra_rank = f", +{needs.ram_per_extra_rank_gb:.1f} GB a further GPU" if needs.ram_per_extra_rank_gb else ""
        out.print(f"[bold]{escape(item.name)}[/] ({item.spec.job_id}): needs {needs.vram_gb:.1f} GB VRAM per GPU{at} "
                  f"({parts}), {needs.ram_gb:.1f} GB RAM" + (f" ({escape(ram)}{extra_rank})" if ram else "")
                  + f", {needs.disk_gb:.0f} GB disk, " + (f"{needs.flops / 1e12:,.3g} TFLOP" if needs.flops else
                                                          f"{needs.io_bytes / 1e9:,.3g} GB to stream"),
                  highlight=False)
        for note in needs.notes:
            out.print(f"  note: {escape(note)}", highlight=False)
        for label, codes in (("pinned", PIN_REJECTIONS), ("memory", MEMORY_REJECTIONS)):
            if left := _left_out(choice, codes):
                out.print(f"  {label}: {escape(left)}", highlight=False)
        if choice.winner is None:
            out.print(f"  [yellow]no offer:[/] {escape(choice.explain_empty())}", highlight=False)
            continue
        total += choice.winner.expected_usd
        table = Table(show_edge=False, pad_edge=False)
        numbers = ("VRAM", "chunk", "need", "$/h", "work h", "expected $", "worst $")
        for column in ("#", "provider", "GPU", "VRAM", "tier", "spot", *(("chunk",) if chunked else ()), "need",
                       "$/h", "work h", "expected $", "worst $", "why not"):
            table.add_column(column, justify="right" if column in numbers else "left")
        for rank, c in enumerate(choice.ranked[:top], start=1):
            chunk = (str(c.mini_batch) if c.mini_batch else "-",) if chunked else ()
            table.add_row(str(rank), c.offer.provider, f"{c.offer.gpu_count}x {c.offer.gpu_model}",
                          f"{c.offer.vram_gb:.0f}", c.offer.tier, "spot" if c.spot else "on-demand", *chunk,
                          f"{c.vram_need_gb:.1f}",  # VRAM per GPU at that chunk, the learned correction included
                          f"{c.usd_per_hour:.3f}", f"{c.hours:.3g}", f"{c.expected_usd:.2f}",
                          f"{c.worst_case_usd:.2f}", escape(c.why_lost or "best"))
        out.print(table)
        for rank, c in enumerate(choice.ranked[:top], start=1):
            if c.traffic is not None:  # billed per byte: its own line of the breakdown
                pulled, pushed = c.traffic.expected_gb(c.expected_hours, c.interruption_rate * c.hours,
                                                       CHECKPOINT_MINUTES / 60)
                out.print(f"  #{rank} bandwidth ${c.breakdown['bandwidth']:.2f}: {pulled:,.1f} GB in at "
                          f"${c.traffic.download_usd_per_gb:.3f}/GB, {pushed:,.1f} GB out at "
                          f"${c.traffic.upload_usd_per_gb:.3f}/GB (" + ", ".join(
                              f"{k} ${v:.2f}" for k, v in c.breakdown.items()) + ")", highlight=False)
    return total


def _left_out(choice: Choice, codes: frozenset[Rejection]) -> str:
    """How many offers lost on one of `codes` (the --gpu/--provider pins; the job's memory against the
    card's VRAM or the host's RAM), by reason, with an example of each."""
    left: dict[str, list[str]] = {}
    for item in choice.rejected:
        if item.code in codes:
            where = "" if item.code in PIN_REJECTIONS else f"{item.offer.provider} {item.offer.gpu_count}x {item.offer.gpu_model}: "
            left.setdefault(item.code.value, []).append(where + item.reason.split(": ", 1)[-1])
    return "; ".join(f"{len(examples)} offers left out as {code} (e.g. {examples[0]})" for code, examples in left.items())


def _show_plan(plan: CampaignPlan, flags: Flags, job_options: JobOptions, skypilot_tasks: bool = False) -> None:
    plans = _plans(plan, job_options, flags["allow_stale"])
    top, tasks = flags["top"], _skypilot_tasks(plans) if skypilot_tasks else None
    if flags["as_json"]:
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
            out.print(f"[yellow]no SkyPilot task[/] for {escape(item.name)} ({item.spec.job_id}): {escape(problem)}",
                      highlight=False)
            continue
        out.print(f"[bold]SkyPilot task[/] for {escape(item.name)} ({item.spec.job_id}), as `--backend skypilot` "
                  "would submit it on the winning offer:", highlight=False)
        typer.echo(task, nl=False)  # verbatim: no markup, no wrapping


def _skypilot_tasks(plans: list[tuple[NewJob, Choice]]) -> list[tuple[Optional[str], Optional[str]]]:
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
    tasks: list[tuple[Optional[str], Optional[str]]] = []
    for item, (_, choice) in zip(staged, plans):
        try:
            tasks.append((skypilot_task_yaml(cfg, item.spec, choice), None))
        except BackendError as exc:
            tasks.append((None, str(exc)))
    return tasks


# ------------------------------------------------------------------------------------ launching

def _launch(plan: CampaignPlan, flags: Flags, job_options: JobOptions) -> None:
    as_json, wait, dry_run = flags["as_json"], flags["wait"], flags["dry_run"]
    if not as_json or dry_run:
        _show_plan(plan, flags, job_options, skypilot_tasks=dry_run and job_options.backend == "skypilot")
    if dry_run:
        return
    cfg = settings()
    sessionmaker = sessions(cfg)

    def confirm(staged: CampaignPlan, uploads: list[Upload]) -> bool:
        for item in uploads:
            err.print(f"input {item.path} {'is already at' if item.skipped else 'uploaded to'} {item.uri}",
                      highlight=False, markup=False)
        if job_options.backend == "local":
            _warn_local(cfg, staged)
        if not as_json:
            usable = sorted(b for b in build_backends(cfg) if job_options.backend in (b, "auto"))
            out.print(f"runs on: {', '.join(usable)}" + (" (the cheapest to finish, re-chosen at each relaunch)"
                                                        if len(usable) > 1 else ""), highlight=False)
        if flags["yes"]:
            return True
        if not sys.stdin.isatty():
            fail("not a terminal: pass --yes to launch without the confirmation prompt")
        return typer.confirm(f"launch {len(staged.jobs)} job(s)?")

    try:
        submitted = submit(cfg, sessionmaker, plan, job_options, confirm=confirm)
    except LaunchError as exc:
        fail(str(exc), exc.code)
    if submitted is None:
        raise typer.Exit(1)
    campaign_id, ids = submitted.campaign, submitted.jobs
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
                err.print(f"warning: {warning}", highlight=False, markup=False)


def _supervise(cfg, sessionmaker, ids: list[str], quiet: bool = False) -> dict[str, str]:
    from planner.interface.cli.display import watch
    from planner.run.launching import build_supervisor, run_until_final

    supervisor = build_supervisor(cfg, sessionmaker)
    try:
        with watch(err, sessionmaker, ids, quiet=quiet) as on_tick:  # live table on a terminal, lines when piped
            return run_until_final(supervisor, ids, interval_s=min(cfg.poll_interval_s, 2.0), on_tick=on_tick)
    except KeyboardInterrupt:
        err.print("stopped watching; the jobs keep running. `planner jobs tick` or `planner serve` supervises them")
        raise typer.Exit(130) from None


# ------------------------------------------------------------------------------------ the commands

def _define_commands(target: typer.Typer, planning: bool) -> None:
    """The same command per job kind for `plan KIND` and `launch KIND`; launch-only flags hidden from `plan`.
    Each command states every flag it takes (options.py holds the shared ones) and passes `ctx` to
    `resolve`, which fills what was not given from planner.toml."""
    Backend, Yes, Wait, DryRun, IgnoreBalance = options.launch_only(hidden=planning)  # noqa: N806 (type aliases)

    def dispatch(plan: CampaignPlan, flags: Flags) -> None:
        job_options = replace(flags.job_options(), ignore_balance=bool(flags["ignore_balance"]))
        if planning:
            _show_plan(plan, flags, job_options)
        else:
            _launch(plan, flags, job_options)

    @target.command("train-bag")
    def train_bag(
        ctx: typer.Context,
        fraction: Annotated[float, typer.Option("--fraction", parser=options.finite(),
                                                help="Share of each task to train on, in (0, 1].")],
        data: options.Data = None,
        output: Annotated[Optional[str], typer.Option(help="Output URI (default: under PLANNER_RUNS_DIR).")] = None,
        checkpoint: Annotated[Optional[str], typer.Option(
            help="Checkpoint URI (default: under PLANNER_RUNS_DIR).")] = None,
        model: options.Model = None, seed: options.Seed = None, method: options.Method = None,
        epochs: options.Epochs = None, batch_size: options.BatchSize = None, max_steps: options.MaxSteps = None,
        spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None, budget_usd: options.Budget = None,
        gpu: options.Gpu = None, provider: options.Provider = None, top: options.Top = 5,
        allow_stale: options.AllowStale = False, backend: Backend = None, yes: Yes = False, wait: Wait = False,
        dry_run: DryRun = False, ignore_balance: IgnoreBalance = False, as_json: options.Json = False,
    ) -> None:
        """One BOOM bag: fine-tune MODEL on a seeded FRACTION of the corpus."""
        flags = resolve(ctx)
        in_unit_interval(fraction, "--fraction")
        method, extra = flags.train()
        data = local_input(flags.required("data", "--data"), "--data")
        job = campaigns.train_bag_job(settings(), model=local_input(flags["model"], "--model", model=True),
                                      data=data, fraction=fraction, seed=flags["seed"], method=method, extra=extra,
                                      output=output, checkpoint=checkpoint)
        dispatch(CampaignPlan("train-bag", job.spec.params, [job]), flags)

    @target.command("merge")
    def merge(
        ctx: typer.Context,
        models: Annotated[str, typer.Option("--models", help="Comma-separated model directories or URIs.")],
        weights: Annotated[str, typer.Option("--weights", help="Comma-separated positive weights.")],
        output: Annotated[Optional[str], typer.Option()] = None,
        spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None, budget_usd: options.Budget = None,
        gpu: options.Gpu = None, provider: options.Provider = None, top: options.Top = 5,
        allow_stale: options.AllowStale = False, backend: Backend = None, yes: Yes = False, wait: Wait = False,
        dry_run: DryRun = False, ignore_balance: IgnoreBalance = False, as_json: options.Json = False,
    ) -> None:
        """Multi-SLERP merge of finished bags."""
        flags = resolve(ctx)
        names, values = [m for m in models.split(",") if m], floats(weights, "--weights")
        if len(names) != len(values) or len(names) < 2:
            fail("give at least two --models and exactly one --weights value per model")
        job = campaigns.merge_job(settings(), names, values, (), output)
        dispatch(CampaignPlan("merge", job.spec.params, [job]), flags)

    @target.command("encode")
    def encode(
        ctx: typer.Context,
        model: Annotated[str, typer.Option("--model", help="The model to encode with: directory or URI.")],
        input_uri: Annotated[Optional[str], typer.Option("--input", help=options.job_help(
            "encode", "Corpus to encode (planner.toml: encode)."))] = None,
        spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None, budget_usd: options.Budget = None,
        gpu: options.Gpu = None, provider: options.Provider = None, top: options.Top = 5,
        allow_stale: options.AllowStale = False, backend: Backend = None, yes: Yes = False, wait: Wait = False,
        dry_run: DryRun = False, ignore_balance: IgnoreBalance = False, as_json: options.Json = False,
    ) -> None:
        """Batch-encode a corpus with a model."""
        flags = resolve(ctx)
        corpus = local_input(flags.required("input_uri", "--input", "--encode"), "--input")
        job = campaigns.encode_job(settings(), local_input(model, "--model", model=True), corpus, ())
        dispatch(CampaignPlan("encode", job.spec.params, [job]), flags)

    @target.command("evaluate")
    def evaluate(
        ctx: typer.Context,
        model: Annotated[str, typer.Option("--model", help="The model to evaluate: directory, fsspec URI or hub id.")],
        eval: options.Eval = None,
        spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None, budget_usd: options.Budget = None,
        gpu: options.Gpu = None, provider: options.Provider = None, top: options.Top = 5,
        allow_stale: options.AllowStale = False, backend: Backend = None, yes: Yes = False, wait: Wait = False,
        dry_run: DryRun = False, ignore_balance: IgnoreBalance = False, as_json: options.Json = False,
    ) -> None:
        """Retrieval metrics (nDCG@10, recall@10, MRR@10) of a model on a held-out set."""
        flags = resolve(ctx)
        data = local_input(flags.required("eval", "--eval"), "--eval")
        job = campaigns.evaluate_job(settings(), "model", local_input(model, "--model", model=True), data, ())
        dispatch(CampaignPlan("evaluate", job.spec.params, [job]), flags)

    @target.command("bagging")
    def bagging(
        ctx: typer.Context,
        data: options.Data = None,
        fractions: Annotated[str, typer.Option("--fractions")] = "0.2,0.4,0.6,0.8,1.0",
        weights: Annotated[str, typer.Option("--weights")] = "0.2,0.4,0.6,0.8,1.0",
        encode: options.Encode = None, eval: options.Eval = None,
        model: options.Model = None, seed: options.Seed = None, method: options.Method = None,
        epochs: options.Epochs = None, batch_size: options.BatchSize = None, max_steps: options.MaxSteps = None,
        spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None, budget_usd: options.Budget = None,
        gpu: options.Gpu = None, provider: options.Provider = None, top: options.Top = 5,
        allow_stale: options.AllowStale = False, backend: Backend = None, yes: Yes = False, wait: Wait = False,
        dry_run: DryRun = False, ignore_balance: IgnoreBalance = False, as_json: options.Json = False,
    ) -> None:
        """The BOOM campaign: bags in parallel, their merge, then optional encode and evaluation."""
        flags = resolve(ctx)
        method, extra = flags.train()
        data = local_input(flags.required("data", "--data"), "--data")
        try:
            plan = campaigns.bagging(settings(), model=local_input(flags["model"], "--model", model=True), data=data,
                                     fractions=floats(fractions, "--fractions"), weights=floats(weights, "--weights"),
                                     method=method, seed=flags["seed"],
                                     encode=local_input(flags["encode"], "--encode"),
                                     evaluate=local_input(flags["eval"], "--eval"), train_extra=extra)
        except ValueError as exc:
            fail(str(exc))
        dispatch(plan, flags)

    @target.command("incremental")
    def incremental(
        ctx: typer.Context,
        previous: Annotated[str, typer.Option("--previous", help="The current merged model.")],
        new_data: Annotated[str, typer.Option("--new-data")],
        replay_data: Annotated[Optional[str], typer.Option("--replay-data", help=options.job_help(
            "data", "The old corpus to replay."))] = None,
        replay_fraction: Annotated[float, typer.Option("--replay-fraction", parser=options.finite())] = 0.4,
        weights: Annotated[str, typer.Option("--weights")] = "2.8,4.3",
        seed: options.Seed = None, method: options.Method = None, epochs: options.Epochs = None,
        batch_size: options.BatchSize = None, max_steps: options.MaxSteps = None,
        spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None, budget_usd: options.Budget = None,
        gpu: options.Gpu = None, provider: options.Provider = None, top: options.Top = 5,
        allow_stale: options.AllowStale = False, backend: Backend = None, yes: Yes = False, wait: Wait = False,
        dry_run: DryRun = False, ignore_balance: IgnoreBalance = False, as_json: options.Json = False,
    ) -> None:
        """The incremental stage: train on new data plus replayed old data, merge with the previous model."""
        flags = resolve(ctx)
        method, extra = flags.train()
        in_unit_interval(replay_fraction, "--replay-fraction")
        replay = local_input(flags.required("replay_data", "--replay-data", "--data"), "--replay-data")
        try:
            plan = campaigns.incremental(settings(), previous=local_input(previous, "--previous", model=True),
                                         new_data=local_input(new_data, "--new-data"), replay_data=replay,
                                         replay_fraction=replay_fraction, weights=floats(weights, "--weights"),
                                         method=method, seed=flags["seed"], train_extra=extra)
        except ValueError as exc:
            fail(str(exc))
        dispatch(plan, flags)


_define_commands(plan_app, planning=True)
_define_commands(launch_app, planning=False)
