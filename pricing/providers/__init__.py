"""One module per provider, each exposing a `Provider` whose `fetch()` returns normalized offers,
and one API client module per provider (`runpod_api`, `vast_api`) that both the price readers and
the launch backends (planner.run.backends) call.

PROVIDERS is the registry: every factory (planner.run.pricebook.build_providers,
planner.run.launching.build_backends) iterates it, and the provider names come from here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

RUNPOD = "runpod"
VAST = "vast"


@dataclass(frozen=True)
class ProviderInfo:
    name: str  # as stored on offers, attempts and snapshots
    title: str  # for people
    key_env: str  # the environment variable holding its API key
    provider: str  # "module:Class" of its pricing.providers.base.Provider
    spot: bool  # rents interruptible instances (RunPod removed its spot pods in 2026)

    def provider_class(self):
        module, _, cls = self.provider.partition(":")
        return getattr(importlib.import_module(module), cls)


PROVIDERS: dict[str, ProviderInfo] = {
    RUNPOD: ProviderInfo(RUNPOD, "RunPod", "RUNPOD_API_KEY", "pricing.providers.runpod:RunPodProvider",
                         spot=False),
    VAST: ProviderInfo(VAST, "Vast.ai", "VAST_API_KEY", "pricing.providers.vast:VastProvider", spot=True),
}
NAMES: tuple[str, ...] = tuple(PROVIDERS)


def offers_spot(name: str) -> bool:
    """Whether a provider's spot prices may be planned on (unregistered ones, e.g. local, carry none anyway)."""
    info = PROVIDERS.get(name)
    return info is None or info.spot
