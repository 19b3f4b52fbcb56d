"""Refresh leases of dead holders expire (issue 24): a refresh killed with -9 blocked every refresh of its
provider for 15 minutes ("skipped", exit 0, a stale book). Now a holder on this host whose process is gone
holds nothing, and any other holder's lease is short and renewed only while it works."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

from pricing import db, store
from pricing.refresh import LEASE_TTL, holder_dead, refresh
from tests.test_store import StaticProvider, offer


def hold(url, holder, for_=timedelta(minutes=15)):
    sessions = db.session_factory(url)
    with sessions() as session:
        assert store.acquire_lease(session, "vast", holder, for_)
    return sessions


def test_a_lease_of_a_killed_refresh_on_this_host_is_taken_over_at_once(db_url):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sessions = hold(db_url, f"{socket.gethostname()}:{dead.pid}:123")
    assert holder_dead(f"{socket.gethostname()}:{dead.pid}:123")
    [result] = refresh(sessions, [StaticProvider("vast", [offer("a")])], retention=timedelta(days=14))
    assert result.status == "ok"


def test_a_live_holder_or_another_host_s_keeps_its_lease_until_it_lapses(db_url):
    sessions = hold(db_url, f"{socket.gethostname()}:{os.getpid()}:other-refresh")  # alive: this very process
    [result] = refresh(sessions, [StaticProvider("vast", [offer("a")])], retention=timedelta(days=14))
    assert result.status == "skipped"
    assert not holder_dead("another-host:1:1")  # cannot be checked from here: its lease must lapse instead
    with sessions() as session:
        store.release_lease(session, "vast", f"{socket.gethostname()}:{os.getpid()}:other-refresh")
    hold(db_url, "another-host:4242:1", for_=timedelta(seconds=-1))  # lapsed
    [result] = refresh(sessions, [StaticProvider("vast", [offer("a")])], retention=timedelta(days=14))
    assert result.status == "ok"
    assert LEASE_TTL <= timedelta(minutes=2)  # a killed holder on another host blocks refreshes this long at most


def test_a_refresh_renews_its_short_lease_while_it_works(db_url):
    slow = StaticProvider("vast", [offer("a")])
    slow.release.clear()
    sessions = db.session_factory(db_url)
    worker = threading.Thread(target=lambda: refresh(sessions, [slow], retention=timedelta(days=14),
                                                     lease_ttl=timedelta(seconds=0.6)))
    worker.start()
    slow.started.wait(10)
    time.sleep(1.5)  # past two lease lengths: renewed meanwhile, so another refresh still finds it held
    with sessions() as session:
        assert not store.acquire_lease(session, "vast", "another-host:1:1", timedelta(seconds=5))
    slow.release.set()
    worker.join()
