"""Relay-facing mTLS server (relay-api.md §1–§9).

Public API: ``RelayServer`` (the listener the daemon composes), ``openapi_document()`` (served by
the admin listener only), and ``agent.api.relaysim.RelayClient`` (relay simulator client for
tests, demo and acceptance).
"""

from agent.api.openapi import openapi_document
from agent.api.server import RelayServer

__all__ = ["RelayServer", "openapi_document"]
