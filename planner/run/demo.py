"""`planner demo`: the product end to end on this machine, with no keys and no network.

1. the price book: a recorded snapshot served on 127.0.0.1 to the real provider code (labelled so);
2. the BOOM campaign for a tiny random Qwen3 on a small generated multi-task corpus: five bags, their
   Multi-SLERP merge, encoding a document set, and the evaluation of every bag and the merge;
3. its plan on the recorded book: each job's cheapest-to-finish offer and expected dollars;
4. the run, on the local backend under the real supervisor, with one injected spot interruption
   (SIGTERM, SIGKILL 5 s later) of a bag after its first checkpoint, resumed from that checkpoint;
5. the evaluation table and the bill: each attempt's time priced as if on its job's chosen offer.

Everything it makes goes into one directory. Steps are plain functions: the CLI renders them and
tests call them.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from planner.config import Settings
from planner.run import pricebook
from planner.run.replay import RECORDED_LABEL, ReplayServer
from pricing import db, store
from pricing.offer import Offer
from pricing.refresh import ProviderResult


@dataclass
class DemoResult:
    directory: Path
    source: str
    refresh: list[ProviderResult] = field(default_factory=list)
    cheapest: list[Offer] = field(default_factory=list)


def default_directory() -> Path:
    return Path.cwd() / f"planner-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def demo_settings(directory: Path, provider_url: str) -> Settings:
    return Settings(db_url=f"sqlite:///{directory / 'planner.db'}", runpod_url=provider_url, vast_url=provider_url,
                    runpod_api_key=None, vast_api_key=None, vast_min_interval_s=0)


def run_price_book(directory: Path, min_vram_gb: float = 3, top: int = 10) -> DemoResult:
    """Serve the recorded book on 127.0.0.1, refresh through the real providers, list the cheapest offers."""
    directory.mkdir(parents=True, exist_ok=True)
    result = DemoResult(directory=directory, source=RECORDED_LABEL)
    with ReplayServer() as url:
        settings = demo_settings(directory, url)
        db.upgrade(settings.db_url)
        result.refresh = pricebook.refresh_book(settings)
    with pricebook.sessions_for(settings)() as session:
        result.cheapest = store.current_offers(session, store.OfferQuery(min_vram_gb=min_vram_gb, limit=top))
    return result


# The toy corpus (jobs.toy) has 24 records a task and one negative a query. FlagEmbedding's sampler, the
# default, trains only whole per-task batches (the 20 % bag has 4-5 records a task: batches of 4) and fills
# a group with repeated negatives (a group of 2 is the toy's whole group: no copies to encode).
DEMO_TRAINING = {"batch_size": 4, "group_size": 2, "epochs": 3, "lr": 1e-3, "save_every_steps": 2}


@dataclass
class PipelineResult:
    campaign: str
    plan: list[dict]  # per job: name, offer, $/h, expected $
    states: dict[str, str]
    interrupted: str | None  # the job whose attempt was interrupted
    evaluation: list[dict]  # per evaluated model: name, ndcg@10, recall@10, mrr@10
    bill: list[dict]  # per attempt: job, number, outcome, seconds, as-if $
    encoded: int  # records encoded by the merged model

    @property
    def total_usd(self) -> float:
        return sum(row["usd"] for row in self.bill)


def run_pipeline(directory: Path, on_event: Callable[[str], None] = lambda message: None) -> PipelineResult:
    """The campaign on the local backend, supervised, with one injected interruption (after run_price_book)."""
    from jobs.toy import WORDS, build_tiny_model, write_toy_corpus
    from planner.plan import campaigns
    from planner.plan.plans import book_offers, limits_for, plan_job
    from planner.records import Job
    from planner.run.backends.base import Handle
    from planner.run.launching import JobOptions, attempts_of, build_supervisor, run_until_final, submit

    settings = demo_settings(directory, "http://127.0.0.1:9").model_copy(
        update={"runs_dir": directory / "runs", "poll_interval_s": 0.5})
    inputs = directory / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(inputs / "base-model")
    corpus = write_toy_corpus(inputs / "train.jsonl", n_per_task=24, seed=0)
    heldout = write_toy_corpus(inputs / "heldout.jsonl", n_per_task=10, seed=1)
    documents = inputs / "documents.txt"
    documents.write_text("".join(f"{WORDS[i % len(WORDS)]} {WORDS[(7 * i) % len(WORDS)]} passage {i}\n"
                                 for i in range(200)))
    plan = campaigns.bagging(settings, model=str(model), data=str(corpus), encode=str(documents),
                             evaluate=str(heldout), train_extra=DEMO_TRAINING)
    sessions = pricebook.sessions_for(settings)
    rows = []
    with sessions() as session:
        offers = book_offers(session)
        now = max(o.fetched_at for o in offers)  # the recorded book's own time: its prices are "fresh" then
        shapes = plan.model_shapes()
        for item in plan.jobs:
            winner = plan_job(session, item.spec, limits_for(None, settings), offers, now, shapes=shapes).winner
            rows.append({"job": item.spec.job_id, "name": item.name, "provider": winner.offer.provider,
                         "gpu": winner.offer.gpu_model, "spot": winner.spot, "usd_per_hour": winner.usd_per_hour,
                         "expected_usd": winner.expected_usd})
    campaign_id = submit(settings, sessions, plan, JobOptions(backend="local")).campaign
    on_event(f"campaign {campaign_id}: {len(plan.jobs)} jobs")

    supervisor = build_supervisor(settings, sessions)
    backend = supervisor.backends["local"]
    bags = [item.spec for item in plan.jobs if item.spec.kind == "train-bag"]
    interrupted: list[str] = []

    def on_tick(report) -> None:
        for line in report.lines():
            on_event(line)
        if interrupted:
            return
        victim = bags[len(bags) // 2]
        if (Path(victim.checkpoint_uri) / "LATEST").exists():
            with sessions() as session:
                live = [a for a in attempts_of(session, victim.job_id) if a.outcome == "running"]
            if live:
                backend.preempt(Handle.from_attempt(live[0]), grace_s=5.0)
                interrupted.append(victim.job_id)
                on_event(f"injected a spot interruption into {victim.job_id} (SIGTERM, SIGKILL after 5 s)")

    states = run_until_final(supervisor, [item.spec.job_id for item in plan.jobs], interval_s=settings.poll_interval_s,
                             on_tick=on_tick, timeout_s=1200)
    price = {row["job"]: row["usd_per_hour"] for row in rows}
    evaluation, bill = [], []
    with sessions() as session:
        for item in plan.jobs:
            for attempt in attempts_of(session, item.spec.job_id):
                seconds = ((attempt.ended_at or attempt.launched_at) - attempt.launched_at).total_seconds()
                bill.append({"job": item.spec.job_id, "name": item.name, "attempt": attempt.number,
                             "outcome": attempt.outcome, "seconds": round(seconds, 1),
                             "usd": price[item.spec.job_id] * seconds / 3600})
            if item.spec.kind == "evaluate" and session.get(Job, item.spec.job_id).state == "succeeded":
                metrics = json.loads((Path(item.spec.output_uri) / "metrics.json").read_text())["overall"]
                evaluation.append({"model": item.name.removeprefix("evaluate "), **metrics})
    encode = next(item.spec for item in plan.jobs if item.spec.kind == "encode")
    manifest = Path(encode.output_uri) / "manifest.json"
    encoded = json.loads(manifest.read_text())["records"] if manifest.exists() else 0
    return PipelineResult(campaign_id, rows, states, interrupted[0] if interrupted else None, evaluation, bill,
                          encoded)
