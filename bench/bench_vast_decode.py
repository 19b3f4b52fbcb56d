"""Decoding one synthetic 20,000-offer Vast bundles answer: every field (orjson, what the provider did
before) against only the fields we keep (msgspec structs, pricing.providers.vast.decode_bundles),
interleaved so both see the same machine load.

    .venv/bin/python -m bench.bench_vast_decode
"""
from __future__ import annotations

import json
import statistics
import time

import orjson

from bench.bench_refresh import synthetic_vast
from pricing.providers.vast import decode_bundles

if __name__ == "__main__":
    body = json.dumps(synthetic_vast(20_000)).encode()
    full, kept = [], []
    for _ in range(5):
        start = time.perf_counter()
        orjson.loads(body)["offers"]
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        decode_bundles(body)
        kept.append(time.perf_counter() - start)
    print(f"{len(body) / 1e6:.1f} MB: orjson, every field: median {statistics.median(full):.3f} s; "
          f"msgspec, kept fields: median {statistics.median(kept):.3f} s")
