"""Where an attempt runs: the local machine, RunPod, Vast.ai, SkyPilot; one module each behind backends.base.

CLOUD_BACKENDS is the registry of provider backends, keyed by the provider names of
pricing.providers.PROVIDERS; planner.run.launching.build_backends iterates it.
"""
from __future__ import annotations

import importlib

from pricing.providers import RUNPOD, VAST

CLOUD_BACKENDS = {  # provider name -> "module:Class", imported when built
    RUNPOD: "planner.run.backends.runpod:RunPodBackend",
    VAST: "planner.run.backends.vast:VastBackend",
}


def cloud_backend_class(name: str):
    module, _, cls = CLOUD_BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
