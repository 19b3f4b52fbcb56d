"""The provider registry: each provider is declared here once, and everything else derives from its entry.

An entry names the provider's price reader and launch backend as "module:Class" strings, imported only
when built (the backend lives in planner.run, a layer above: a string keeps the import rule), and the
facts the planner needs without talking to it: its default URL and key variable (planner.config makes
the settings from them), whether it rents interruptible instances, how often its instances are
interrupted before we have our own history (planner.plan.choose), and SkyPilot's name for it.
Adding a provider is a price reader and API client in pricing/providers/, a backend in
planner/run/backends/, a docs/providers/ page, and one entry below (ARCHITECTURE.md, "Adding a provider").

The facts behind each entry are in docs/providers/<name>.md.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

RUNPOD = "runpod"
VAST = "vast"


@dataclass(frozen=True)
class ProviderEntry:
    name: str  # as stored on offers, attempts and snapshots; the --provider and --backend value
    default_url: str  # the API's base URL (PLANNER_<NAME>_URL overrides it)
    key_env: str  # the environment variable holding its API key
    prices: str  # "module:Class" of its pricing.providers.base.Provider
    backend: str  # "module:Class" of its planner.run.backends.remote.CloudBackend
    spot: bool  # rents interruptible instances; False: every spot price it shows is dropped (pricing.offer)
    # interruptions per instance-hour before our own attempts say otherwise: (on-demand, spot)
    interruptions_per_hour: tuple[float, float]
    tier_interruptions_per_hour: dict[str, float] = field(default_factory=dict)  # added on these tiers
    skypilot_cloud: str | None = None  # SkyPilot's cloud name, None where SkyPilot cannot launch it

    def prior_interruptions_per_hour(self, spot: bool, tier: str | None) -> float:
        return self.interruptions_per_hour[spot] + self.tier_interruptions_per_hour.get(tier or "", 0.0)


PROVIDERS: dict[str, ProviderEntry] = {entry.name: entry for entry in (
    ProviderEntry(
        RUNPOD, "https://api.runpod.io", "RUNPOD_API_KEY",
        prices="pricing.providers.runpod:RunPodProvider", backend="planner.run.backends.runpod:RunPodBackend",
        spot=False,  # spot pods were removed in 2026 (docs/providers/runpod.md, "No spot")
        interruptions_per_hour=(0.002, 0.05), skypilot_cloud="runpod"),
    ProviderEntry(
        VAST, "https://console.vast.ai", "VAST_API_KEY",
        prices="pricing.providers.vast:VastProvider", backend="planner.run.backends.vast:VastBackend",
        spot=True, interruptions_per_hour=(0.01, 0.10),
        tier_interruptions_per_hour={"unverified": 0.02},  # hosts without datacentre verification fail more
        skypilot_cloud="vast"),
)}
NAMES: tuple[str, ...] = tuple(PROVIDERS)


def load(reference: str):
    """The class a "module:Class" string names (imported now)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def has_spot(name: str) -> bool:
    """Whether a provider's spot prices exist (unregistered places, e.g. local, carry none anyway)."""
    entry = PROVIDERS.get(name)
    return entry is None or entry.spot


def prior_interruptions_per_hour(name: str, spot: bool, tier: str | None) -> float:
    """The entry's prior for a registered provider; 0 for this machine and other unregistered places."""
    entry = PROVIDERS.get(name)
    return entry.prior_interruptions_per_hour(spot, tier) if entry else 0.0


def skypilot_providers() -> dict[str, str]:
    """Our provider name -> SkyPilot's cloud name, for the providers SkyPilot can launch."""
    return {name: entry.skypilot_cloud for name, entry in PROVIDERS.items() if entry.skypilot_cloud}
