"""Where an attempt runs: the local machine, each registered provider, SkyPilot; one module each behind backends.base.

A provider's backend class is named by its entry in pricing.providers.registry ("module:Class"), imported
when built; planner.run.launching.build_backends builds one per provider whose key is configured.
"""
from __future__ import annotations

from pricing.providers.registry import PROVIDERS, load


def cloud_backend_class(name: str):
    """The backend class of registered provider `name` (planner.run.backends.remote.CloudBackend)."""
    return load(PROVIDERS[name].backend)
