"""The board's own address: `config(addr_mode=)` and `config("mac")`, as NimBLE on an ESP32.

The emulated ESP32 has a public address (the air's), so it starts in mode 0
on every activation. MicroPython's modes:

- 0 PUBLIC: the public address; `mac` is (0, it).
- 1 RANDOM: a new random static address each time the mode is set (NimBLE's
  ble_hs_id_gen_rnd); `mac` is (1, it). It is also the identity address
  given in pairing.
- 2 RPA: resolvable private addresses made from the board's IRK, with the
  public address as identity (NimBLE's BLE_OWN_ADDR_RPA_PUBLIC_DEFAULT; an
  RPA with a random identity would need a board without a public address).
  A new RPA after CONFIG_BT_NIMBLE_RPA_TIMEOUT (900 s). `mac` raises
  EINVAL: NimBLE cannot tell the RPA in use.
- 3 NRPA: a non-resolvable private address, used like a random one; `mac`
  is (1, it).

Any other value is ignored, as by MicroPython's switch. The address is put in
the controller when advertising, scanning or connecting next starts (the model
does that on the way; NimBLE at once): nothing can tell the difference.
"""

from __future__ import annotations

import errno
import time

from bumble import hci

from kommune.hil.radio.board_ble_events import display_address
from kommune.hil.radio.board_ble_gatt import BleError
from kommune.hil.radio.board_ble_stack import HostStack

ADDR_MODE_PUBLIC = 0
ADDR_MODE_RANDOM = 1
ADDR_MODE_RPA = 2
ADDR_MODE_NRPA = 3
RPA_TIMEOUT_S = 900.0  # CONFIG_BT_NIMBLE_RPA_TIMEOUT's default


class OwnAddress:
    """The address mode of one board and the addresses it has made."""

    def __init__(self, public: hci.Address, static: hci.Address) -> None:
        self.public = public
        self.static = static  # the random static address (identity in mode 1)
        self.mode = ADDR_MODE_PUBLIC
        self._random = static  # what mode 1 or 3 puts in the controller
        self._rpa: hci.Address | None = None
        self._rpa_made_s = 0.0

    def reset(self) -> None:
        """NimBLE's sync: public, since the board has a public address."""
        self.mode = ADDR_MODE_PUBLIC

    def set_mode(self, mode: object) -> None:
        if mode == ADDR_MODE_PUBLIC:
            self.mode = ADDR_MODE_PUBLIC
        elif mode == ADDR_MODE_RANDOM:
            self.static = self._random = hci.Address.generate_static_address()
            self.mode = ADDR_MODE_RANDOM
        elif mode == ADDR_MODE_RPA:
            self._rpa = None
            self.mode = ADDR_MODE_RPA
        elif mode == ADDR_MODE_NRPA:
            self._random = hci.Address.generate_private_address()  # no IRK: non-resolvable
            self.mode = ADDR_MODE_NRPA

    @property
    def identity_public(self) -> bool:
        """The identity address pairing gives: public (modes 0, 2) or random."""
        return self.mode in (ADDR_MODE_PUBLIC, ADDR_MODE_RPA)

    def mac(self) -> tuple[int, bytes]:
        if self.mode == ADDR_MODE_PUBLIC:
            return display_address(self.public)
        if self.mode == ADDR_MODE_RPA:
            raise BleError(errno.EINVAL, "the RPA in use is not known")
        return display_address(self._random)

    def own_address_type(self) -> hci.OwnAddressType:
        if self.mode == ADDR_MODE_PUBLIC:
            return hci.OwnAddressType.PUBLIC
        return hci.OwnAddressType.RANDOM

    async def apply(self, stack: HostStack) -> hci.OwnAddressType:
        """Put the random address the mode wants in the controller; the own address
        type for advertising, scanning and connecting."""
        if self.mode == ADDR_MODE_PUBLIC:
            return hci.OwnAddressType.PUBLIC
        device = stack.device
        if self.mode == ADDR_MODE_RPA:
            now = time.monotonic()
            if self._rpa is None or now - self._rpa_made_s > RPA_TIMEOUT_S:
                self._rpa = hci.Address.generate_private_address(device.irk)
                self._rpa_made_s = now
            wanted = self._rpa
        else:
            wanted = self._random
        device.static_address = self.static
        if device.random_address != wanted:
            await stack.command(
                device.send_command(
                    hci.HCI_LE_Set_Random_Address_Command(random_address=wanted),
                    check_result=True,
                )
            )
            device.random_address = wanted
        return hci.OwnAddressType.RANDOM
