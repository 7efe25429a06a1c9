"""The parking scanner: authenticated occupancy reports from battery bay sensors.

Parking sensors (firmware/parking) broadcast an 8-byte report
(protocols/kommune/protocols/parking_report.py) in their BLE advertisements. The
scanner part hears them through bleak (the platform's backend, or our Bumble backend
on `KOMMUNE_BLE_TRANSPORT`), verifies each report's tag under the bay's own key and
refuses any seq not above the last accepted one (kept durably in the agent's state
directory, fsync'd before the event is committed), and commits Occupancy events to the
outbox (`bay-<id>/occupancy`, `bay-<id>/prev-duration`).

    verifier = ReportVerifier(keys, SeqStore(state_dir / "parking" / "seqs.json"))
    outcome = verifier.check(301, report)          # accepted / duplicate / refused
    part = ParkingPart(site, outbox_part)          # in the agent (agent/parts.py)
"""

from kommune.edge.parking.advert import COMPANY_ID, parse_advert
from kommune.edge.parking.keyfile import KeyFileError, load_keys
from kommune.edge.parking.seqs import SeqStore
from kommune.edge.parking.verifier import Outcome, ReportVerifier

__all__ = [
    "COMPANY_ID",
    "KeyFileError",
    "Outcome",
    "ReportVerifier",
    "SeqStore",
    "load_keys",
    "parse_advert",
]
