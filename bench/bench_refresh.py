"""One refresh of a synthetic 20,000-offer Vast answer plus RunPod, from HTTP parse to commit, beside
dstack's gpuhunt parsing the same answers (gpuhunt only parses: it has no store).

    .venv/bin/python bench/bench_refresh.py [--offers 20000] [--repeat 5] [--gpuhunt-python PATH]

Both sides fetch from the same local fake servers (127.0.0.1), so the network is out of the
picture. For the peer, install gpuhunt in its own venv:
    python3 -m venv bench/.venv-gpuhunt && bench/.venv-gpuhunt/bin/pip install gpuhunt==0.1.34
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from pricing import db
from pricing.providers.runpod import RunPodProvider
from pricing.providers.vast import VastProvider
from pricing.refresh import refresh

VAST_NAMES = [("RTX 4090", 24564, 0.35), ("RTX 3090", 24576, 0.2), ("H100 SXM", 81559, 1.9), ("A100 SXM4", 81920, 1.1),
              ("RTX 5090", 32607, 0.6), ("L40S", 46068, 0.8), ("RTX A6000", 49140, 0.45), ("A40", 46068, 0.4),
              ("RTX 3060", 12288, 0.07), ("H200", 143771, 2.6), ("Tesla V100", 16384, 0.2), ("RTX 4070", 12282, 0.12)]


def synthetic_vast(n: int) -> dict:
    template = json.loads(resources.files("pricing").joinpath("data", "recorded_vast_bundles.json").read_text())
    base = template["offers"][0]
    rng = random.Random(0)
    offers = []
    for i in range(n):
        name, ram, price = VAST_NAMES[i % len(VAST_NAMES)]
        gpus = rng.choice([1, 1, 1, 2, 4, 8])
        offer = copy.deepcopy(base)
        dph = round(price * gpus * rng.uniform(0.7, 1.5), 6)
        offer.update(id=10_000_000 + i, ask_contract_id=10_000_000 + i, gpu_name=name, gpu_ram=ram, num_gpus=gpus,
                     gpu_total_ram=ram * gpus, dph_base=dph, min_bid=round(dph * 0.6, 6), storage_cost=0.15,
                     dph_total=dph + 0.15 * 5 / 720, reliability2=rng.uniform(0.9, 1), reliability=0.99,
                     verification=rng.choice(["verified", "unverified"]), machine_id=i)
        offers.append(offer)
    return {"offers": offers}


class Fake(BaseHTTPRequestHandler):
    bodies: dict[str, bytes] = {}

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = self.bodies[self.path.split("?")[0]]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


# gpuhunt's RunPod provider fans out per data centre (queries our fake does not answer), so the peer
# comparison is Vast only: one gpuhunt search against our on-demand + bid searches.
GPUHUNT_SCRIPT = """
import sys, time, gpuhunt.providers.vastai as v
v.bundles_url = sys.argv[1] + "/api/v0/bundles/"
samples = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    offers = v.VastAIProvider().get()
    samples.append(time.perf_counter() - t)
print(len(offers), min(samples), sorted(samples)[len(samples) // 2])
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--offers", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gpuhunt-python", default="bench/.venv-gpuhunt/bin/python")
    args = parser.parse_args()
    Fake.bodies = {
        "/api/v0/bundles/": json.dumps(synthetic_vast(args.offers)).encode(),
        "/graphql": resources.files("pricing").joinpath("data", "recorded_runpod_gpu_types.json").read_bytes(),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    samples, count = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/bench.db"
        db.upgrade(db_url)
        sessions = db.session_factory(db_url)
        for _ in range(args.repeat):
            providers = [RunPodProvider(url), VastProvider(url, limit=args.offers + 1, min_interval_s=0)]
            start = time.perf_counter()
            results = refresh(sessions, providers, retention=timedelta(days=14))
            samples.append(time.perf_counter() - start)
            count = sum(r.offers for r in results)
            assert all(r.status == "ok" for r in results), results
    print(f"ours, full refresh: {count} offers fetched, parsed, validated and committed; median "
          f"{statistics.median(samples):.2f} s, min {min(samples):.2f} s over {args.repeat} runs (target < 2 s)")
    vast_samples = []
    for _ in range(args.repeat):
        provider = VastProvider(url, limit=args.offers + 1, min_interval_s=0)
        start = time.perf_counter()
        vast_count = len(provider.fetch())
        vast_samples.append(time.perf_counter() - start)
    ours = statistics.median(vast_samples) / 2  # two searches: on-demand and bid
    print(f"ours, Vast fetch + parse only: {vast_count} offers from 2 searches; median "
          f"{statistics.median(vast_samples):.2f} s, {ours:.2f} s per search")
    if Path(args.gpuhunt_python).exists():
        peer_run = subprocess.run([args.gpuhunt_python, "-c", GPUHUNT_SCRIPT, url, str(args.repeat)],
                                  capture_output=True, text=True)
        if peer_run.returncode:
            raise SystemExit(f"gpuhunt run failed:\n{peer_run.stderr[-3000:]}")
        line = peer_run.stdout.split()
        peer = float(line[2])
        print(f"gpuhunt 0.1.34, Vast: {line[0]} offers from 1 search, fetched and parsed; median {peer:.2f} s")
        print(f"ratio per search, ours / gpuhunt: {ours / peer:.2f}")
    else:
        print(f"(peer skipped: {args.gpuhunt_python} not found)")
    server.shutdown()


if __name__ == "__main__":
    main()
