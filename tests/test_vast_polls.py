"""A tick's polls of Vast.ai instances share one v1 listing filtered on all their labels (`label in [...]`:
docs/providers/vast.md, "Instances"; Vast limits requests per IP), and each tick reads it afresh, so no poll
answers from the tick before. Against the simulated Vast.ai (tests/simcloud)."""
from __future__ import annotations

import json
from urllib.parse import unquote

import requests

from planner.run.backends.base import Handle, Status
from planner.run.backends.vast import VastBackend
from pricing.providers.vast_api import VastAPI
from tests.simcloud.vast import FakeVast
from tests.simcloud.world import VAST_KEY, stop_fakes


def rent(fake: FakeVast, label: str) -> Handle:
    answer = requests.put(f"{fake.url}/api/v0/asks/103/", headers={"Authorization": f"Bearer {fake.key}"}, timeout=10,
                          json={"client_id": "me", "image": "pytorch", "disk": 10, "label": label, "runtype": "args",
                                "onstart": "/bin/sh", "args": ["-c", "sleep 60"], "env": {}})
    assert answer.status_code == 200, answer.text
    return Handle(backend="vast", instance_id=str(answer.json()["new_contract"]), label=label,
                  data={"output_uri": f"memory://vast-polls/{label}", "spot": False})


def listings(fake: FakeVast) -> list[list[str]]:
    """The labels each v1 listing asked for, in order."""
    return [sorted(json.loads(unquote(r["query"]["select_filters"]))["label"]["in"]) for r in fake.requests
            if r["method"] == "GET" and r["path"] == "/api/v1/instances/" and "select_filters" in r["query"]]


def test_each_tick_polls_every_instance_through_one_fresh_listing(tmp_path):
    fake = FakeVast(VAST_KEY, tmp_path / "boxes", grace_s=1.0)
    try:
        handles = [rent(fake, f"planner-j{n}-a1") for n in range(3)]
        labels = sorted(h.label for h in handles)
        backend = VastBackend(VastAPI(fake.url, VAST_KEY), image="pytorch", jobs_install="planner",
                              clock=lambda: 0.0)  # one instant: no listing is read again for its age

        def tick():
            return [backend.poll(h).status for h in handles]

        tick()  # the first tick learns the labels as it polls them
        for _ in range(3):
            before = len(listings(fake))
            statuses = tick()
            assert listings(fake)[before:] == [labels] and Status.FAILED not in statuses  # one listing, every label

        gone = handles[1]  # ended between two ticks: the next tick must see it, not the last tick's row
        assert requests.delete(f"{fake.url}/api/v0/instances/{gone.instance_id}/", timeout=10,
                               headers={"Authorization": f"Bearer {fake.key}"}).status_code == 200
        before = len(listings(fake))
        statuses = tick()
        assert listings(fake)[before:] == [labels]
        assert statuses[1] is Status.FAILED and statuses[0] is not Status.FAILED and statuses[2] is not Status.FAILED
    finally:
        stop_fakes(fake)
