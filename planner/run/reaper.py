"""The reaper: ends every labelled instance that no live attempt owns (a box that outlived its job bills).

Every instance a backend creates carries our label (planner.run.backends.base.instance_label), and every
attempt row is written before its instance is created, so a labelled instance without a live attempt
is an orphan: a launch whose row ended, or a box a cancel or a settle failed to end.

Only this project's instances are candidates: a label names its project (planner.records.Project), and
one provider account or runs directory may serve several projects, each with its own database. A label
from before projects had an identity is ours only if its job is in our database. The live attempts are
read after the listing, in one transaction: an instance the listing shows had its attempt row committed
before it was created, so a launch another supervisor makes meanwhile is never taken for an orphan.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from planner.records import LIVE_ATTEMPT, Attempt, Job, project_id
from planner.run.backends.base import Backend, Handle, parse_label

log = logging.getLogger(__name__)


def reap(sessions: sessionmaker, backends: dict[str, Backend],
         on_reaped: Callable[[str, str, str | None], None] = lambda backend, label, instance_id: None) -> list[str]:
    """Terminate every labelled instance that no live attempt owns; returns their labels. `on_reaped(backend,
    label, instance id)` hears of each (the supervisor's notifier: money was at risk)."""
    reaped = []
    listed: list[tuple[Backend, Handle]] = []
    for backend in backends.values():
        try:
            listed += [(backend, handle) for handle in backend.list_labeled()]
        except Exception as exc:  # noqa: BLE001 (weather or a torn record: this backend's orphans wait a tick)
            log.warning("reaper: cannot list %s instances (%s); next tick", backend.name, _line(exc))
    with sessions() as session:  # after the listing (see above)
        orphans = _orphans(session, listed)
    for backend, handle in orphans:
        try:
            backend.cancel(handle)
            reaped.append(handle.label)
            on_reaped(backend.name, handle.label, handle.instance_id)
            log.warning("reaper: terminated orphan %s (%s)", handle.label, handle.instance_id)
        except Exception as exc:  # noqa: BLE001 (the other orphans still get ended)
            log.warning("reaper: cannot terminate %s (%s); next tick", handle.label, _line(exc))
    return reaped


def _line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def _orphans(session, listed: list[tuple[Backend, Handle]]) -> list[tuple[Backend, Handle]]:
    """The listed instances of this project that no live attempt owns."""
    project = project_id(session)
    live = {(a.job_id, a.number): a.instance_id for a in
            session.scalars(select(Attempt).where(Attempt.outcome.in_(LIVE_ATTEMPT)))}
    labels = {id(handle): parse_label(handle.label) for _, handle in listed}
    legacy = {label.job_id for label in labels.values() if label is not None and label.project is None}
    known = set(session.scalars(select(Job.id).where(Job.id.in_(legacy)))) if legacy else set()
    orphans = []
    for backend, handle in listed:
        label = labels[id(handle)]
        if label is None or label.project not in (project, None) or (label.project is None and label.job_id not in known):
            continue  # not ours: another project's, or anyone else's
        if live.get((label.job_id, label.attempt), "") in (None, handle.instance_id):
            continue  # owned, or mid-launch (the row exists before the instance id is known)
        orphans.append((backend, handle))
    return orphans
