"""The reaper: ends every labelled instance that no live attempt owns (a box that outlived its job bills).

Every instance a backend creates carries our label (planner.run.backends.base.instance_label), and every
attempt row is written before its instance is created, so a labelled instance without a live attempt
is an orphan: a launch whose row ended, or a box a cancel or a settle failed to end.
"""
from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from planner.records import LIVE_ATTEMPT, Attempt
from planner.run.backends.base import Backend, BackendError, job_of_label
from pricing.providers.base import ProviderError

log = logging.getLogger(__name__)


def reap(sessions: sessionmaker, backends: dict[str, Backend]) -> list[str]:
    """Terminate every labelled instance that no live attempt owns; returns their labels."""
    reaped = []
    with sessions() as session:
        live = {(a.job_id, a.number): a.instance_id for a in
                session.scalars(select(Attempt).where(Attempt.outcome.in_(LIVE_ATTEMPT)))}
    for backend in backends.values():
        try:
            handles = backend.list_labeled()
        except (BackendError, ProviderError) as exc:
            log.warning("reaper: cannot list %s instances (%s); next tick", backend.name, exc)
            continue
        for handle in handles:
            owner = job_of_label(handle.label)
            if owner is None:
                continue
            if owner in live and live[owner] in (None, handle.instance_id):
                continue  # owned, or mid-launch (the row exists before the instance id is known)
            try:
                backend.cancel(handle)
                reaped.append(handle.label)
                log.warning("reaper: terminated orphan %s (%s)", handle.label, handle.instance_id)
            except (BackendError, ProviderError) as exc:
                log.warning("reaper: cannot terminate %s (%s); next tick", handle.label, exc)
    return reaped
