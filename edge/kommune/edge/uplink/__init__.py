"""The uplink: batches from the outbox, as SenML-CBOR, to an MQTT 5 broker (docs/uplink.md).

senml     packs of queued rows in SenML (RFC 8428) CBOR, and the decoder
batcher   batches per priority class, closed by count, bytes or age
backoff   jittered exponential waits between connection attempts
config    the settings (broker, TLS, topics, window, policies) and their checks
mqtt      the `Uplink` itself: publish QoS 1, acknowledge rows after PUBACK
"""

from .backoff import Backoff, BackoffPolicy
from .batcher import DEFAULT_POLICIES, Batch, Batcher, BatchPolicy
from .config import TlsConfig, UplinkConfig, UplinkConfigError
from .mqtt import Uplink, UplinkState, UplinkStopped, records_of
from .senml import Record, SenmlError

__all__ = [
    "DEFAULT_POLICIES",
    "Backoff",
    "BackoffPolicy",
    "Batch",
    "BatchPolicy",
    "Batcher",
    "Record",
    "SenmlError",
    "TlsConfig",
    "Uplink",
    "UplinkConfig",
    "UplinkConfigError",
    "UplinkState",
    "UplinkStopped",
    "records_of",
]
