"""Downlinks: signed documents from the backend to one edge agent, or to every agent of
a site, on the uplink's MQTT connection (docs/uplink.md, "Downlinks").

envelope  the signed envelope (COSE_Sign1, Ed25519): `sign` for a backend, `Verifier`
          for the agent; a total decoder (`EnvelopeError` with a reason)
store     what has been applied, per kind, durably (SQLite): idempotent apply, replays
          and conflicts refused
keys      the backend's Ed25519 keys as files (PEM)

Everything here runs in the edge agent (and, for `sign` and `keys`, in the backend's
tooling: `kommune downlink keygen|sign`). The agent part that hosts them is
kommune.edge.agent.downlink_part.
"""

from .envelope import KINDS, Downlink, EnvelopeError, Refusal, Verifier, sign
from .store import Applied, Decision, DownlinkStore, StoreError

__all__ = [
    "KINDS",
    "Applied",
    "Decision",
    "Downlink",
    "DownlinkStore",
    "EnvelopeError",
    "Refusal",
    "StoreError",
    "Verifier",
    "sign",
]
