"""A box ends itself (jobs.boxend) with the instance-scoped identity its provider injects, and only its own
instance: against the simulated RunPod and Vast.ai (tests/simcloud), whose scoped keys follow the providers'
documentation (cited there)."""
from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
import requests

from jobs import boxend
from tests.simcloud.runpod import FakeRunPod
from tests.simcloud.vast import FakeVast
from tests.simcloud.world import RUNPOD_KEY, VAST_KEY, stop_fakes

SLEEP = "sleep 60"


@pytest.fixture(params=["runpod", "vast"])
def cloud(request, tmp_path):
    fake = (FakeRunPod(RUNPOD_KEY, tmp_path / "boxes", grace_s=1.0) if request.param == "runpod"
            else FakeVast(VAST_KEY, tmp_path / "boxes", grace_s=1.0))
    yield request.param, fake
    stop_fakes(fake)


def rent(provider: str, fake, name: str, script: str = SLEEP):
    """One instance created with the account key, as the planner's backends create them; its box."""
    if provider == "runpod":
        answer = requests.post(f"{fake.url}/v2/pods", headers={"Authorization": f"Bearer {fake.key}"}, timeout=10,
                               json={"name": name, "image": "pytorch", "gpu": {"id": "NVIDIA RTX A6000", "count": 1},
                                     "cloud": "SECURE", "ports": [], "args": script, "env": {"A": "1"}})
        assert answer.status_code == 201, answer.text
        return answer.json()["id"], fake.boxes[answer.json()["id"]]
    answer = requests.put(f"{fake.url}/api/v0/asks/103/", headers={"Authorization": f"Bearer {fake.key}"}, timeout=10,
                          json={"client_id": "me", "image": "pytorch", "disk": 10, "label": name, "runtype": "args",
                                "onstart": "/bin/sh", "args": ["-c", script], "env": {"A": "1"}})
    assert answer.status_code == 200, answer.text
    instance = answer.json()["new_contract"]
    return str(instance), fake.boxes[instance]


def box_environ(provider: str, fake, box) -> dict[str, str]:
    """What jobs.boxend reads on the box: the provider's injected identity plus what the launch sets."""
    return {**box.env, boxend.PROVIDER_ENV: provider, boxend.URL_ENV: fake.url}


def live(provider: str, fake, instance: str) -> bool:
    return (instance in fake.pods) if provider == "runpod" else (int(instance) in fake.instances)


def test_a_box_deletes_its_own_instance_and_no_other(cloud):
    provider, fake = cloud
    mine, my_box = rent(provider, fake, "planner-j1-a1")
    other, _ = rent(provider, fake, "planner-j2-a1")
    environ = box_environ(provider, fake, my_box)
    id_var, key_var = boxend.IDENTITY[provider][:2]
    assert environ[id_var] == mine and environ[key_var] not in (RUNPOD_KEY, VAST_KEY)
    assert key_var not in my_box.request_env  # injected by the provider, never sent by us

    # the instance key on another instance's route, or on the account's listing, is refused
    path = boxend.IDENTITY[provider][3].format(id=other)
    for method, url in (("DELETE", fake.url + path), ("GET", fake.url + ("/v2/pods" if provider == "runpod"
                                                                           else "/api/v1/instances/"))):
        request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {environ[key_var]}",
                                                                      "User-Agent": boxend.USER_AGENT})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    assert live(provider, fake, other)

    assert boxend.end_self(environ, sleep=lambda s: None) is None
    assert not live(provider, fake, mine) and live(provider, fake, other)
    deadline = time.monotonic() + 10
    while my_box.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not my_box.alive  # the provider stopped the container, billing ended
    assert boxend.end_self(environ, sleep=lambda s: None) is None  # already gone: quiet


def test_the_box_names_its_own_user_agent_which_runpods_edge_lets_through(cloud):
    """RunPod's edge (Cloudflare) refuses urllib's default User-Agent with 403 "error code: 1010" before it
    reads the key (docs/providers/runpod.md, "Box identity"): a box sending it could never end itself."""
    provider, fake = cloud
    mine, box = rent(provider, fake, "planner-j1-a1")
    environ = box_environ(provider, fake, box)
    url = fake.url + boxend.IDENTITY[provider][3].format(id=mine)
    default = urllib.request.Request(url, method="DELETE",
                                     headers={"Authorization": f"Bearer {environ[boxend.IDENTITY[provider][1]]}"})
    if provider == "runpod":
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(default, timeout=10)
        assert refused.value.code == 403 and refused.value.read() == b"error code: 1010" and live(provider, fake, mine)
    assert boxend.end_self(environ, sleep=lambda s: None) is None and not live(provider, fake, mine)
    deletes = [r for r in fake.requests if r["method"] == "DELETE"]
    assert deletes[-1]["headers"].get("User-Agent") == boxend.USER_AGENT


def test_a_new_pod_passes_provisioning_and_starting_before_its_container_runs(tmp_path):
    """RunPod's v2 `PodStatus`: a new pod is PROVISIONING, then STARTING, then RUNNING (docs/providers/runpod.md,
    "Pods"); its container runs only once RUNNING, `runtime` null before. The backend reads both as pending."""
    from pydantic import SecretStr

    from planner.run.backends.base import Handle, Status
    from planner.run.backends.runpod import RunPodBackend
    from pricing.providers.runpod_api import RunPodAPI

    fake = FakeRunPod(RUNPOD_KEY, tmp_path / "boxes", grace_s=1.0)
    fake.boot_s = 2.0
    try:
        pod_id, box = rent("runpod", fake, "planner-boot-a1", "echo container up; sleep 60")
        backend = RunPodBackend(RunPodAPI(fake.url, SecretStr(RUNPOD_KEY)), image="i", jobs_install="p")
        handle = Handle(backend="runpod", instance_id=pod_id, label="planner-boot-a1",
                        data={"output_uri": "memory://boot-a1/out"})
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not seen or seen[-1] != "RUNNING":
            assert time.monotonic() < deadline, seen
            lines = box.lines()  # read before the status: a container up by then must read RUNNING
            pod = requests.get(f"{fake.url}/v2/pods/{pod_id}", headers={"Authorization": f"Bearer {fake.key}"},
                               timeout=10).json()
            if pod["status"] != "RUNNING":
                assert pod["runtime"] is None and "container up" not in lines, (pod, lines)
                polled = backend.poll(handle)
                assert polled.status is Status.PENDING and polled.detail.startswith("pod "), polled
            if not seen or seen[-1] != pod["status"]:
                seen.append(pod["status"])
            time.sleep(0.1)
        assert seen == ["PROVISIONING", "STARTING", "RUNNING"]
        while "container up" not in box.lines():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop_fakes(fake)


def test_instance_keys_outlive_a_rotated_account_key(cloud):
    provider, fake = cloud
    mine, box = rent(provider, fake, "planner-j1-a1")
    fake.rotate_key()
    assert requests.get(fake.url + ("/v2/pods" if provider == "runpod" else "/api/v1/instances/"), timeout=10,
                        headers={"Authorization": f"Bearer {RUNPOD_KEY if provider == 'runpod' else VAST_KEY}"}
                        ).status_code in (401, 404)  # Vast answers a bad key with 404 auth_error
    assert boxend.end_self(box_environ(provider, fake, box), sleep=lambda s: None) is None
    assert not live(provider, fake, mine)


def test_a_revoked_instance_key_is_not_read_as_gone(cloud):
    """Vast answers a bad key with 404 `auth_error`: only `no_such_instance` means the instance is gone."""
    provider, fake = cloud
    mine, box = rent(provider, fake, "planner-j1-a1")
    environ = box_environ(provider, fake, box)
    environ[boxend.IDENTITY[provider][1]] = "revoked"
    why = boxend.end_self(environ, sleep=lambda s: None)
    assert why is not None and "revoked" not in why and ("401" in why or "404" in why)
    assert live(provider, fake, mine)


def test_retries_provider_weather_then_deletes(cloud):
    provider, fake = cloud
    mine, box = rent(provider, fake, "planner-j1-a1")
    route = "rp.delete" if provider == "runpod" else "vast.delete"
    fake.inject(route, 429, {"title": "Too Many Requests", "status": 429}, times=2)
    fake.inject(route, 503, "<html>unavailable</html>", times=1)
    waits = []
    assert boxend.end_self(box_environ(provider, fake, box), sleep=waits.append, log=lambda *a, **k: None) is None
    assert waits == [1, 2, 4] and not live(provider, fake, mine)


def test_no_identity_means_no_delete():
    assert boxend.end_self({boxend.PROVIDER_ENV: "runpod"}) == "no instance identity in the environment"
    assert boxend.own_instance({"RUNPOD_POD_ID": "x", "RUNPOD_API_KEY": "k"}) is None  # the launch named no provider


def test_stop_times_leave_the_grace_for_the_report_and_the_delete():
    environ = {boxend.DEADLINE_ENV: "1000", boxend.STOP_GRACE_ENV: "100"}
    assert boxend.stop_times(environ) == (900.0, 1000 - 100 * boxend.KILL_MARGIN_S)
    assert boxend.stop_times({}) is None


def test_install_failed_waits_the_startup_window_then_ends_the_box(cloud):
    provider, fake = cloud
    mine, box = rent(provider, fake, "planner-j1-a1")
    environ = {**box_environ(provider, fake, box), boxend.STARTUP_ENV: "30"}
    now = [1000.0]

    def sleep(seconds):
        now[0] += seconds

    assert boxend.install_failed(environ, clock=lambda: now[0], sleep=sleep, log=lambda *a, **k: None) == 1
    assert not live(provider, fake, mine) and now[0] >= 1030.0


def test_guard_ends_the_box_at_its_deadline_and_not_before(cloud):
    provider, fake = cloud
    mine, box = rent(provider, fake, "planner-j1-a1")
    environ = {**box_environ(provider, fake, box), boxend.DEADLINE_ENV: "1500"}
    now = [1000.0]
    seen = []

    def sleep(seconds):
        seen.append(live(provider, fake, mine))
        now[0] += seconds

    assert boxend.guard(environ, clock=lambda: now[0], sleep=sleep, log=lambda *a, **k: None) == 0
    assert all(seen) and now[0] >= 1500 and not live(provider, fake, mine)
    assert boxend.guard({}, sleep=lambda s: pytest.fail("no deadline: nothing to wait for")) == 0


def test_install_failed_without_an_identity_returns_at_once():
    assert boxend.install_failed({}, sleep=lambda s: pytest.fail("nothing to wait for"), log=lambda *a, **k: None) == 1


def test_jobs_logs_shows_the_containers_lines_not_the_daemons(cloud, cli, db_url, monkeypatch):
    """`planner jobs logs` on a live box: the job's own lines (Vast without `daemon_logs`, RunPod's stream
    with `source=container`), never the host daemon's or the platform's system lines."""
    import json

    from planner.records import Attempt, Job
    from pricing.db import session_factory

    provider, fake = cloud
    script = "echo container line one; echo container line two; sleep 60"
    instance, box = rent(provider, fake, "planner-logs-a1", script)
    deadline = time.monotonic() + 60
    while len(box.lines()) < 2:
        assert time.monotonic() < deadline, box.lines()
        time.sleep(0.1)
    if provider == "vast":  # the fake's daemon log is there to be asked for, and differs
        answer = requests.put(f"{fake.url}/api/v0/instances/request_logs/{instance}/", timeout=10,
                              headers={"Authorization": f"Bearer {fake.key}"}, json={"daemon_logs": "true"})
        url = answer.json()["result_url"]
        daemon = next(r.text for r in iter(lambda: requests.get(url, timeout=10), None) if r.status_code == 200)
        assert "vastai-daemon" in daemon and "container line" not in daemon
    with session_factory(db_url)() as session:
        session.add(Job(id="logs-1", name="logs", kind="encode", spec="{}", state="running"))
        session.flush()  # the job before its attempt (the attempt's foreign key)
        session.add(Attempt(job_id="logs-1", number=1, backend=provider, provider=provider, instance_id=instance,
                            outcome="running", handle=json.dumps({"backend": provider, "instance_id": instance,
                                                                  "label": "planner-logs-a1",
                                                                  "data": {"output_uri": "memory://logs-1/out"}})))
        session.commit()
    key_env = "RUNPOD_API_KEY" if provider == "runpod" else "VAST_API_KEY"
    monkeypatch.setenv(key_env, fake.key)
    monkeypatch.setenv(f"PLANNER_{provider.upper()}_URL", fake.url)
    shown = cli("jobs", "logs", "logs-1", "--tail", "5").stdout.splitlines()
    assert shown[-2:] == ["container line one", "container line two"], shown
    assert not any("daemon" in line or "system" in line.lower() for line in shown)


def test_the_simulated_vast_bills_a_boxs_traffic_per_byte(tmp_path):
    """Vast bills bandwidth per byte at each host's `inet_down_cost` / `inet_up_cost` (docs/providers/vast.md,
    "Bandwidth"): the fake meters what a box moves to and from its store (here a plain HTTP server)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.simcloud.vast import ASKS

    blob = b"x" * 3_000_000

    class Store(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def do_PUT(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    store = ThreadingHTTPServer(("127.0.0.1", 0), Store)
    threading.Thread(target=store.serve_forever, daemon=True).start()
    fake = FakeVast(VAST_KEY, tmp_path / "boxes", grace_s=1.0)
    try:
        script = ("import os,urllib.request as u;e=os.environ['AWS_ENDPOINT_URL'];u.urlopen(e+'/model').read();"
                  "u.urlopen(u.Request(e+'/out',data=b'y'*1000000,method='PUT')).read();print('moved')")
        answer = requests.put(f"{fake.url}/api/v0/asks/103/", headers={"Authorization": f"Bearer {fake.key}"},
                              timeout=10, json={"client_id": "me", "image": "pytorch", "disk": 10, "label": "planner-bw",
                                                "runtype": "args", "onstart": "/bin/sh",
                                                "args": ["-c", f'python -c "{script}"; sleep 60'],
                                                "env": {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{store.server_port}"}})
        instance = answer.json()["new_contract"]
        box = fake.boxes[instance]
        deadline = time.monotonic() + 60
        while "moved" not in box.lines():
            assert time.monotonic() < deadline, box.lines()
            time.sleep(0.1)
        bill = fake.bills[instance]
        meter = bill["meter"]
        assert 3_000_000 <= meter.down < 3_100_000 and 1_000_000 <= meter.up < 1_100_000  # bytes, HTTP framing aside
        _, _, _, _, _, down_cost, up_cost = ASKS[103]
        assert fake.bandwidth_usd(bill) == pytest.approx((meter.down * down_cost + meter.up * up_cost) / 1e9)
        assert fake.bandwidth_usd(bill) > 0 and fake.billed_usd("planner-bw") > fake.bandwidth_usd(bill)
    finally:
        stop_fakes(fake)
        store.shutdown()
