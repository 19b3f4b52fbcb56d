"""The one abstraction every provider module implements; all provider quirks stay in its module."""
from __future__ import annotations

from abc import ABC, abstractmethod

from pricing.offer import Offer


class ProviderError(Exception):
    """A fetch failed (HTTP error, timeout, GraphQL errors, malformed or drifted schema).

    The message is one line, safe to store and print: it never contains an API key.
    """


class Provider(ABC):
    """A registered provider class (pricing.providers.registry) also has `from_settings(settings, retry)`:
    built from planner settings (duck-typed: pricing never imports planner) and the shared RetryPolicy.
    Tests feed providers directly, so it is not part of this abstract interface."""

    name: str
    last_report: dict  # what the last fetch noticed (unknown GPUs, dropped rows, ...), stored as snapshot notes

    def __init__(self) -> None:
        self.last_report = {}

    @abstractmethod
    def fetch(self) -> list[Offer]:
        """Return every current offer, normalized; raise ProviderError on any failure."""
