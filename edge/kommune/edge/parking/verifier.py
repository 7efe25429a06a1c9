"""Is this report authentic and new? Tag under the bay's key, seq above the last one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from kommune.edge.parking.seqs import SeqStore
from kommune.protocols import parking_report
from kommune.protocols.errors import BAD_TAG, ProtocolError
from kommune.protocols.hmac_sha256 import HmacKey

ACCEPTED = "accepted"
#: The report accepted last, heard again (a burst repeats it): nothing new, not an attack.
DUPLICATE = "duplicate"
REFUSED = "refused"

#: Refusal reasons.
UNKNOWN_BAY = "unknown_bay"  # no key for this node id (not one of our bays)
FORGED = "forged"  # the tag does not verify
REPLAYED = "replayed"  # authentic, but its seq is below the last accepted one


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str
    node: int
    report: parking_report.Report | None = None
    #: Why it was refused (UNKNOWN_BAY, FORGED, REPLAYED, or a ProtocolError reason).
    reason: str = ""
    #: For an accepted report: the state the edge knew before (None: none yet).
    previous_state: int | None = None


class ReportVerifier:
    def __init__(self, keys: Mapping[int, bytes], seqs: SeqStore) -> None:
        self._keys = {node: HmacKey(key) for node, key in keys.items()}
        self.seqs = seqs
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        self.duplicates = 0

    @property
    def bays(self) -> frozenset[int]:
        return frozenset(self._keys)

    def check(self, node: int, data: bytes) -> Outcome:
        """The verdict on `data` from `node`. An accepted report is not recorded yet:
        the caller commits it (`seqs.commit`) before it acts on it."""
        key = self._keys.get(node)
        if key is None:
            return self._refuse(node, UNKNOWN_BAY)
        try:
            report = parking_report.verify(key, node, data)
        except ProtocolError as e:
            return self._refuse(node, FORGED if e.reason == BAD_TAG else e.reason)
        last = self.seqs.last(node)
        if last is not None:
            if report.seq == last[0]:
                self.duplicates += 1
                return Outcome(DUPLICATE, node, report)
            if report.seq < last[0]:
                return self._refuse(node, REPLAYED, report)
        self.accepted += 1
        return Outcome(ACCEPTED, node, report, previous_state=None if last is None else last[1])

    def _refuse(
        self, node: int, reason: str, report: parking_report.Report | None = None
    ) -> Outcome:
        self.refused[reason] += 1
        return Outcome(REFUSED, node, report, reason)
