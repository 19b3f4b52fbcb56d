"""`planner prices`: refresh, show, history and the SkyPilot catalog export; thin commands over the price
book (planner.run.pricebook, pricing.store)."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from planner.interface import views
from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, err, fail, out, sessions, settings
from planner.interface.cli.options import finite
from planner.run import pricebook
from pricing import store

prices_app = typer.Typer(help="The live price book.", no_args_is_help=True)
app.add_typer(prices_app, name="prices")
MAX_DAYS = 3660  # the HTTP API's bound too: ten years back is before any book


# ------------------------------------------------------------------------------------------ prices

@prices_app.command("refresh")
def prices_refresh(
    provider: Annotated[Optional[str], typer.Option(help=f"Only this provider: {' or '.join(pricebook.PROVIDERS)}.")] = None,
    as_json: options.Json = False,
) -> None:
    """Fetch current prices once (for cron; safe to overlap). Exit 1 if a provider failed."""
    if provider is not None and provider not in pricebook.PROVIDERS:
        fail(f"unknown provider {provider!r}; use one of: {', '.join(pricebook.PROVIDERS)}")
    from planner.interface.cli.display import refresh_status

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
                out.print(f"[{'red' if r.status == 'failed' else 'yellow'}]{r.provider}[/]: {r.status}: "
                          f"{escape(r.reason or '')}",
                          highlight=False)
    raise typer.Exit(1 if any(r.status == "failed" for r in results) else 0)


def _price(value: float | None) -> str:
    return "-" if value is None else f"${value:.3f}"


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes}m" if minutes < 120 else f"{minutes // 60}h"


@prices_app.command("show")
def prices_show(
    min_vram: Annotated[Optional[float], typer.Option("--min-vram", parser=finite(0),
                                                      help="Minimum VRAM per GPU, GB.")] = None,
    gpu: Annotated[Optional[str], typer.Option(help="GPU model or provider name, e.g. H100-SXM or 'RTX 4090'.")] = None,
    provider: Annotated[Optional[str], typer.Option(help=f"{' or '.join(pricebook.PROVIDERS)}.")] = None,
    spot: Annotated[Optional[bool], typer.Option("--spot/--on-demand",
                                                 help="Only spot, or only on-demand prices.")] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", min=1, help="Exactly this many GPUs per instance.")] = None,
    min_reliability: Annotated[Optional[float], typer.Option(
        "--min-reliability", parser=finite(0, 1),
        help="Host reliability at least this (0-1; Vast reports it).")] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="Location contains this, e.g. US, Texas, "
                                                  "EU.")] = None,
    max_price: Annotated[Optional[float], typer.Option("--max-price", parser=finite(0),
                                                       help="At most this many USD per GPU-hour (the price "
                                                       "shown).")] = None,
    sort: Annotated[str, typer.Option("--sort", help="price (cheapest first) | vram | reliability (most "
                                      "first).")] = "price",
    limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 20,
    as_json: options.Json = False,
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
        table.add_row(o.provider, escape(o.gpu_model if o.known_gpu else f"{o.gpu_model} (?)"), f"{o.vram_gb:.0f} GB",
                      str(o.gpu_count), o.tier, _price(o.on_demand_usd_per_gpu_hour), _price(o.spot_usd_per_gpu_hour),
                      "-" if o.reliability is None else f"{o.reliability:.3f}",
                      escape(o.location or "-"), (o.stock or "yes") if o.available else "[red]none[/]",
                      _age(now - o.fetched_at))
    return table


@prices_app.command("history")
def prices_history(
    gpu: Annotated[str, typer.Option(help="GPU model, e.g. RTX4090 or 'H100 SXM'.")],
    days: Annotated[int, typer.Option(min=1, max=MAX_DAYS, help="How many days back.")] = 7,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the history to this .png or .svg file.")] = None,
    as_json: options.Json = False,
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
        err.print(f"no history for {gpu_model!r} in the last {days} days; check the name with: planner prices show",
                  markup=False)
    table = Table(title=f"{escape(gpu_model)}: {'daily' if daily else 'hourly'} prices, last {days} days (USD per GPU-hour)")
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
    directory: Annotated[Optional[Path], typer.Option("--dir", help="SkyPilot catalog root (a directory per "
                                                      "cloud, and common/); default ~/.sky/catalogs/v8.")] = None,
    as_json: options.Json = False,
) -> None:
    """Write SkyPilot catalog CSVs from the live book, so SkyPilot's optimizer sees our prices."""
    from pricing.skypilot_catalog import default_root, export_catalog

    cfg = settings()
    factory = sessions(cfg)
    with factory() as session:
        offers = store.current_offers(session)
    if not offers:
        fail("the price book is empty; run: planner prices refresh", 1)
    written = export_catalog(offers, directory or default_root())
    if as_json:
        emit_json({name: str(path) for name, path in written.items()})
    else:
        for name, path in written.items():
            out.print(f"{name}: {path}")


# ------------------------------------------------------------------------------------------- serve
