"""`planner db`, `planner prices`, `planner serve` and `planner demo`: thin commands over the price
book (planner.run.pricebook, pricing.store), the scheduler and the demo."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from planner.interface import views
from planner.interface.cli.common import (
    JsonOpt, app, database_problem, emit_json, emit_json_line, err, fail, out, sessions, settings,
)
from planner.run import pricebook
from pricing import db, store

db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
prices_app = typer.Typer(help="The live price book.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(prices_app, name="prices")


# ---------------------------------------------------------------------------------------------- db

@db_app.command("upgrade")
def db_upgrade(as_json: bool = JsonOpt) -> None:
    """Create or migrate the database schema to the newest revision."""
    from sqlalchemy.exc import DBAPIError

    cfg = settings()
    problem = database_problem(cfg)
    if problem:
        fail(problem)
    try:
        before, after = db.upgrade(cfg.db_url)
    except DBAPIError as exc:  # never echo the URL or the driver's message: they may hold a password
        fail(f"cannot migrate the database ({type(exc.orig).__name__}); check PLANNER_DB_URL and that the "
             "database is reachable", 1)
    except Exception as exc:
        fail(f"migration failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
             f"(scripts in {db.migrations_dir()})", 1)
    if as_json:
        emit_json({"before": before, "after": after})
    else:
        out.print(f"database at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"))


# ------------------------------------------------------------------------------------------ prices

@prices_app.command("refresh")
def prices_refresh(
    provider: Optional[str] = typer.Option(None, help="Only this provider: runpod or vast."),
    as_json: bool = JsonOpt,
) -> None:
    """Fetch current prices once (for cron; safe to overlap). Exit 1 if a provider failed."""
    if provider is not None and provider not in pricebook.PROVIDERS:
        fail(f"unknown provider {provider!r}; use one of: {', '.join(pricebook.PROVIDERS)}")
    from planner.interface.cli.progress import refresh_status

    cfg = settings()
    sessions(cfg)
    names = [name for name in pricebook.PROVIDERS if provider in (None, name)]
    with refresh_status(err, names, live=None if not as_json else False) as on_progress:
        results = pricebook.refresh_book(cfg, provider, on_progress=on_progress)
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        for r in results:
            if r.status == "ok":
                extra = "".join(f", {k}: {v}" for k, v in r.notes.items() if v)
                out.print(f"[green]{r.provider}[/]: {r.offers} offers in {r.duration_s:.2f}s{extra}")
            else:
                out.print(f"[{'red' if r.status == 'failed' else 'yellow'}]{r.provider}[/]: {r.status}: {r.reason}",
                          highlight=False)
    raise typer.Exit(1 if any(r.status == "failed" for r in results) else 0)


def _price(value: float | None) -> str:
    return "-" if value is None else f"${value:.3f}"


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes}m" if minutes < 120 else f"{minutes // 60}h"


@prices_app.command("show")
def prices_show(
    min_vram: Optional[float] = typer.Option(None, "--min-vram", help="Minimum VRAM per GPU, GB."),
    gpu: Optional[str] = typer.Option(None, help="GPU model or provider name, e.g. H100-SXM or 'RTX 4090'."),
    provider: Optional[str] = typer.Option(None, help="runpod or vast."),
    spot: Optional[bool] = typer.Option(None, "--spot/--on-demand", help="Only spot, or only on-demand prices."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="Exactly this many GPUs per instance."),
    min_reliability: Optional[float] = typer.Option(None, "--min-reliability", min=0.0, max=1.0,
                                                    help="Host reliability at least this (0-1; Vast reports it)."),
    region: Optional[str] = typer.Option(None, "--region", help="Location contains this, e.g. US, Texas, EU."),
    max_price: Optional[float] = typer.Option(None, "--max-price", min=0.0,
                                              help="At most this many USD per GPU-hour (the price shown)."),
    sort: str = typer.Option("price", "--sort", help="price (cheapest first) | vram | reliability (most first)."),
    limit: int = typer.Option(20, min=1, help="Rows to show."),
    as_json: bool = JsonOpt,
) -> None:
    """Current offers, cheapest per GPU-hour first (or by --sort)."""
    if provider is not None and provider not in pricebook.PROVIDERS:
        fail(f"unknown provider {provider!r}; use one of: {', '.join(pricebook.PROVIDERS)}")
    if sort not in store.SORTS:
        fail(f"--sort {sort}: use one of: {', '.join(store.SORTS)}")
    cfg = settings()
    factory = sessions(cfg)
    gpu_model = views.canonical_gpu(gpu)
    query = store.OfferQuery(min_vram_gb=min_vram, gpu=gpu_model, provider=provider, spot=spot, limit=limit,
                             gpu_count=gpus, min_reliability=min_reliability, region=region,
                             max_usd_per_gpu_hour=max_price, sort=sort)
    with factory() as session:
        offers = store.current_offers(session, query)
    stale = pricebook.stale_providers(cfg, factory)
    if stale:
        err.print(f"[yellow]warning:[/] prices of {', '.join(stale)} are older than {_age(cfg.max_price_age)} "
                  "or missing; run: planner prices refresh", highlight=False)
    now = store.utcnow()
    if as_json:
        emit_json([{**o.as_dict(), "price_usd_per_gpu_hour": store.price_of(o, spot),
                    "age_s": round((now - o.fetched_at).total_seconds())} for o in offers])
        return
    out.print(offers_table(offers, now))


def offers_table(offers, now, title: str | None = None) -> Table:
    table = Table(title=title or f"{len(offers)} cheapest offers (USD per GPU-hour)")
    numeric = ("VRAM", "GPUs", "on-demand", "spot", "reliab.", "age")
    for column in ("provider", "GPU", "VRAM", "GPUs", "tier", "on-demand", "spot", "reliab.", "location", "stock",
                   "age"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for o in offers:
        table.add_row(o.provider, o.gpu_model if o.known_gpu else f"{o.gpu_model} (?)", f"{o.vram_gb:.0f} GB",
                      str(o.gpu_count), o.tier, _price(o.on_demand_usd_per_gpu_hour), _price(o.spot_usd_per_gpu_hour),
                      "-" if o.reliability is None else f"{o.reliability:.3f}",
                      o.location or "-", (o.stock or "yes") if o.available else "[red]none[/]",
                      _age(now - o.fetched_at))
    return table


@prices_app.command("history")
def prices_history(
    gpu: str = typer.Option(..., help="GPU model, e.g. RTX4090 or 'H100 SXM'."),
    days: int = typer.Option(7, min=1, help="How many days back."),
    plot: Optional[Path] = typer.Option(None, help="Also draw the history to this .png or .svg file."),
    as_json: bool = JsonOpt,
) -> None:
    """Hourly min and median price per provider and tier (daily rows beyond 14 days)."""
    if plot is not None and plot.suffix.lower() not in (".png", ".svg"):
        fail(f"--plot {plot}: give a .png or .svg file name")
    cfg = settings()
    factory = sessions(cfg)
    gpu_model = views.canonical_gpu(gpu)
    daily = days > views.DAILY_AFTER_DAYS
    with factory() as session:
        rows = store.price_history(session, gpu_model, store.utcnow() - timedelta(days=days), daily=daily)
    records = views.history_rows(rows)
    if plot is not None:
        from planner.interface.plots import plot_history

        plot_history(rows, gpu_model, plot, daily=daily)
    if as_json:
        emit_json(records)
        return
    if not rows:
        err.print(f"no history for {gpu_model!r} in the last {days} days; check the name with: planner prices show")
    table = Table(title=f"{gpu_model}: {'daily' if daily else 'hourly'} prices, last {days} days (USD per GPU-hour)")
    for column in ("day (UTC)" if daily else "hour (UTC)", "provider", "tier", "kind", "min", "median", "offers"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.hour.strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:00"), r.provider, r.tier, "spot" if r.spot else "on-demand",
                      _price(r.min_usd), _price(r.median_usd), str(r.offer_count))
    out.print(table)
    if plot is not None:
        out.print(f"plot written to {plot}")


@prices_app.command("export-skypilot")
def prices_export_skypilot(
    directory: Path = typer.Option(Path.home() / ".sky" / "catalogs" / "v8", "--dir",
                                   help="SkyPilot catalog root (contains runpod/, vast/, common/)."),
    as_json: bool = JsonOpt,
) -> None:
    """Write SkyPilot catalog CSVs from the live book, so SkyPilot's optimizer sees our prices."""
    from pricing.skypilot_catalog import export_catalog

    cfg = settings()
    factory = sessions(cfg)
    with factory() as session:
        offers = store.current_offers(session)
    if not offers:
        fail("the price book is empty; run: planner prices refresh", 1)
    written = export_catalog(offers, directory)
    if as_json:
        emit_json({name: str(path) for name, path in written.items()})
    else:
        for name, path in written.items():
            out.print(f"{name}: {path}")


# ------------------------------------------------------------------------------------------- serve

@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (default PLANNER_API_HOST, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default PLANNER_API_PORT, 8377)."),
    api: bool = typer.Option(True, "--api/--no-api", help="Serve the HTTP API and dashboard."),
    as_json: bool = typer.Option(False, "--json", help="Say when it is up and when it has stopped as JSON lines "
                                 '({"event": "serving", "url": ...}, {"event": "stopped"}).'),
) -> None:
    """Run the price refresh on PLANNER_REFRESH_CRON (and at start when stale) and the HTTP API.

    SIGTERM or Ctrl-C stops it cleanly (a running refresh finishes first) with exit 0."""
    from planner.interface.web import check_bind, create_app
    from planner.run.scheduler import ServeError, serve as run_serve

    cfg = settings()
    sessions(cfg)
    host, port = host or cfg.api_host, port if port is not None else cfg.api_port

    def ready(url: str | None) -> None:
        if as_json:
            emit_json_line({"event": "serving", "url": url, "refresh_cron": cfg.refresh_cron})
        else:
            err.print(f"serving{f' the API and dashboard on {url}' if url else ''}; refresh on "
                      f"{cfg.refresh_cron!r}; Ctrl-C or SIGTERM stops", highlight=False, markup=False)

    try:
        check_bind(host, cfg)
        run_serve(cfg, host, port, create_app if api else None, on_ready=ready)
    except ValueError as exc:
        fail(str(exc))
    except ServeError as exc:
        fail(str(exc), 1)
    if as_json:
        emit_json_line({"event": "stopped"})
    else:
        err.print("stopped", highlight=False)


# -------------------------------------------------------------------------------------------- demo

@app.command()
def demo(
    directory: Optional[Path] = typer.Option(None, "--dir", help="Where to put everything (default: a new folder here)."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the product end to end on this machine: no keys, no network.

    A recorded price book, the plan for a BOOM campaign of a tiny model, the campaign itself on the
    local backend with one injected spot interruption, the evaluation table and the bill."""
    from planner.run.demo import default_directory, run_pipeline, run_price_book

    directory = (directory or default_directory()).resolve()
    if directory.exists() and any(directory.iterdir()):
        fail(f"{directory} is not empty; pass --dir with a new or empty directory")
    book = run_price_book(directory)
    if not as_json:
        out.print(f"[bold]price book[/]: {book.source}", highlight=False)
        for r in book.refresh:
            out.print(f"  {r.provider}: {r.status}, {r.offers} offers" + (f" ({r.reason})" if r.reason else ""))
        out.print(offers_table(book.cheapest, store.utcnow(), "cheapest offers with at least 3 GB of VRAM"))
    if any(r.status == "failed" for r in book.refresh):
        fail("the recorded price book did not load; see above", code=1)
    progress = err if as_json else out
    result = run_pipeline(directory, lambda message: progress.print(f"  {message}", highlight=False))
    succeeded = all(state == "succeeded" for state in result.states.values())
    if as_json:
        emit_json({"directory": str(directory), "source": book.source,
                   "refresh": [r.as_dict() for r in book.refresh], "cheapest": [o.as_dict() for o in book.cheapest],
                   "campaign": result.campaign, "plan": result.plan, "states": result.states,
                   "interrupted": result.interrupted, "evaluation": result.evaluation, "bill": result.bill,
                   "total_usd": result.total_usd, "encoded": result.encoded})
    else:
        _render_demo(result)
        out.print(f"everything is in {directory}")
    raise typer.Exit(0 if succeeded else 1)


def _render_demo(result) -> None:
    plan = Table(title="the plan on the recorded book (cheapest expected cost to finish)", show_edge=False)
    for column in ("job", "provider", "GPU", "spot", "$/h", "expected $"):
        plan.add_column(column, justify="right" if "$" in column else "left")
    for row in result.plan:
        plan.add_row(row["name"], row["provider"], row["gpu"], "spot" if row["spot"] else "on-demand",
                     f"{row['usd_per_hour']:.3f}", f"{row['expected_usd']:.4f}")
    out.print(plan)
    evaluation = Table(title="retrieval on the held-out set: each bag and the merge", show_edge=False)
    for column in ("model", "nDCG@10", "recall@10", "MRR@10"):
        evaluation.add_column(column, justify="left" if column == "model" else "right")
    for row in result.evaluation:
        evaluation.add_row(row["model"], f"{row['ndcg@10']:.3f}", f"{row['recall@10']:.3f}", f"{row['mrr@10']:.3f}")
    out.print(evaluation)
    bill = Table(title="the bill: each attempt's time at its job's chosen offer", show_edge=False)
    for column in ("job", "attempt", "outcome", "seconds", "as-if $"):
        bill.add_column(column, justify="left" if column in ("job", "outcome") else "right")
    for row in result.bill:
        bill.add_row(row["name"], str(row["attempt"]), row["outcome"], f"{row['seconds']:.1f}", f"{row['usd']:.5f}")
    out.print(bill)
    states = ", ".join(f"{state}: {sum(1 for s in result.states.values() if s == state)}"
                       for state in sorted(set(result.states.values())))
    out.print(f"campaign {result.campaign}: {states}; interrupted and resumed: {result.interrupted or 'none'}; "
              f"{result.encoded} documents encoded by the merged model; total as-if ${result.total_usd:.4f}",
              highlight=False)
