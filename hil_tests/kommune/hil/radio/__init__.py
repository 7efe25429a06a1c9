"""The virtual BLE radio ("the air") of the HIL rig.

Architecture: one air process (`python -m kommune.hil.radio.air`) holds an
`AirLink` (a Bumble `LocalLink` with a link model) and one Bumble virtual
`Controller` per device. Each controller is served as HCI over TCP on
127.0.0.1; the device's host stack, in its own process, opens the transport
spec the air reports (`tcp-client:127.0.0.1:PORT`) with Bumble's
`open_transport` — the same call that opens a USB dongle (`usb:0`) on a real
machine. A JSON-lines control channel adds devices and sets faults at run time.

    edge process (bleak + our Bumble backend) --tcp HCI--+
    board supervisor (Bumble host for bluetooth.BLE) --tcp HCI--+--> air: AirLink
    test process (control channel, JSON lines) ------------------+

Add a device and get its HCI transport spec (the call a board bridge needs):

    from kommune.hil.radio import running_air

    async with running_air(seed=7) as air:
        lock = await air.add_device("lock-1", address="F0:4B:00:00:00:01")
        lock.transport   # "tcp-client:127.0.0.1:40123": give it to the lock's host
        edge = await air.add_device("edge")
        await air.set_link("edge", "lock-1", interval_ms=15, loss=0.1, rssi_dbm=-70)
        await air.arm_cut("edge", "lock-1", att_opcode=0x12)  # cut mid-GATT-write
        await air.disconnect("edge", "lock-1")

A host connecting to its port powers the device's controller on; the host
going away (killed, power cut) powers it off, and its peers' links time out.
One host per device: a new connection replaces the old one. A process that
did not start the air drives it with `Air.attach("127.0.0.1:PORT")` (the
control endpoint); in the air's own process `AirServer.add_device` does the
same as the `add_device` request.

Link model (`LinkProfile`, per pair of devices, default for the rest):
- `interval_ms`: connection events; each hop waits for the next event.
- `loss`: per-event failure; LL retransmits at the next event (latency), a
  failure run as long as the supervision timeout drops the link (reason 0x08).
- `rssi_dbm`: reported in advertising reports; below -95 dBm out of range (not
  seen, cannot connect, live links time out).
- forced disconnect now, or armed on the next PDU (optionally an ATT opcode).
Loss draws come from a per-connection RNG seeded by (air seed, pair, ordinal).
"""

from kommune.hil.radio.client import Air, AirDevice, AirError, PairStats, running_air
from kommune.hil.radio.link import LinkStats
from kommune.hil.radio.profile import RX_SENSITIVITY_DBM, LinkProfile, LinkProfileError

__all__ = [
    "RX_SENSITIVITY_DBM",
    "Air",
    "AirDevice",
    "AirError",
    "LinkProfile",
    "LinkProfileError",
    "LinkStats",
    "PairStats",
    "running_air",
]
