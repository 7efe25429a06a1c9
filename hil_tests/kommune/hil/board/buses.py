# machine.I2C / SoftI2C and machine.UART over the rig.
#
# I2C devices are wired to a pin pair in the rig (scl, sda), so a hardware
# bus and a SoftI2C on the same pins see the same devices. Each transfer is one
# request: write bytes, then (repeated start) read bytes.
#
# A UART is its own socket to the rig: the byte stream the rig paces at the
# configured baud rate to the node-link pty. The UART object exposes that
# socket's fd through ioctl, so select.poll and asyncio.StreamReader wait on it
# natively. It never buffers bytes itself (MSG_PEEK for any()/readline), so the
# fd's readiness is always the truth.
import select
import struct
from io import IOBase

from . import rig as _rig
from . import rigwire
from .pins import pin_id

_MP_STREAM_POLL = 3
_MP_STREAM_CLOSE = 4
_MP_STREAM_GET_FILENO = 10
_MSG_PEEK = 2
_PEEK_MAX = 4096


class I2C:
    def __init__(
        self,
        id: int = -1,
        *,
        scl: object = None,
        sda: object = None,
        freq: int = 400_000,
        timeout: int = 50_000,
    ) -> None:
        buses = _rig.get().config.get("i2c", {})
        default = buses.get(str(id))
        if scl is None or sda is None:
            if default is None:
                raise ValueError("I2C(%d) needs scl and sda" % id)
            scl, sda = default
        self._scl = pin_id(scl)
        self._sda = pin_id(sda)
        self._freq = freq

    def init(self, *, scl: object = None, sda: object = None, freq: int = 400_000) -> None:
        if scl is not None:
            self._scl = pin_id(scl)
        if sda is not None:
            self._sda = pin_id(sda)
        self._freq = freq

    def deinit(self) -> None:
        pass

    def _xfer(self, addr: int, write: bytes, nread: int, stop: bool = True) -> bytes:
        head = struct.pack("<BBBBH", self._scl, self._sda, addr, 1 if stop else 0, nread)
        return _rig.get().call(rigwire.I2C_XFER, head + bytes(write))

    def scan(self) -> list:
        return list(_rig.get().call(rigwire.I2C_SCAN, bytes((self._scl, self._sda))))

    def writeto(self, addr: int, buf: bytes, stop: bool = True) -> int:
        self._xfer(addr, buf, 0, stop)
        return len(buf)

    def writevto(self, addr: int, vector: list, stop: bool = True) -> int:
        data = b"".join(bytes(b) for b in vector)
        self._xfer(addr, data, 0, stop)
        return len(data)

    def readfrom(self, addr: int, nbytes: int, stop: bool = True) -> bytes:
        return self._xfer(addr, b"", nbytes, stop)

    def readfrom_into(self, addr: int, buf: bytearray, stop: bool = True) -> None:
        data = self._xfer(addr, b"", len(buf), stop)
        buf[: len(data)] = data

    @staticmethod
    def _mem(memaddr: int, addrsize: int) -> bytes:
        n = addrsize // 8
        return bytes((memaddr >> (8 * (n - 1 - i))) & 0xFF for i in range(n))

    def readfrom_mem(self, addr: int, memaddr: int, nbytes: int, *, addrsize: int = 8) -> bytes:
        return self._xfer(addr, self._mem(memaddr, addrsize), nbytes)

    def readfrom_mem_into(
        self, addr: int, memaddr: int, buf: bytearray, *, addrsize: int = 8
    ) -> None:
        data = self._xfer(addr, self._mem(memaddr, addrsize), len(buf))
        buf[: len(data)] = data

    def writeto_mem(self, addr: int, memaddr: int, buf: bytes, *, addrsize: int = 8) -> None:
        self._xfer(addr, self._mem(memaddr, addrsize) + bytes(buf), 0)


class SoftI2C(I2C):
    def __init__(self, scl: object, sda: object, *, freq: int = 400_000, timeout: int = 50_000):
        super().__init__(-1, scl=scl, sda=sda, freq=freq, timeout=timeout)


_uart_socks: dict = {}  # uart id -> socket: one connection per UART per boot


class UART(IOBase):
    INV_TX = 1
    INV_RX = 2
    INV_RTS = 4
    INV_CTS = 8
    RTS = 1
    CTS = 2

    def __init__(
        self,
        id: int,
        baudrate: int = 115200,
        bits: int = 8,
        parity: object = None,
        stop: int = 1,
        **kwargs: int,
    ) -> None:
        self._id = id
        self._baud = 115200
        self._bits = 8
        self._parity: object = None
        self._stop = 1
        self._timeout = 0
        self._timeout_char = 0
        sock = _uart_socks.get(id)
        if sock is None:
            r = _rig.get()
            sock = _rig.connect(r.path)
            sock.write(_rig.frame(rigwire.UART_OPEN, bytes((id,)) + r.token.encode()))
            _uart_socks[id] = sock
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self.init(baudrate, bits, parity, stop, **kwargs)

    def init(
        self,
        baudrate: int = -1,
        bits: int = -1,
        parity: object = -1,
        stop: int = -1,
        **kwargs: int,
    ) -> None:
        # tx, rx, txbuf, rxbuf, flow, invert: accepted; the rig wires no pins
        timeout = kwargs.get("timeout", -1)
        timeout_char = kwargs.get("timeout_char", -1)
        if baudrate != -1:
            if baudrate <= 0:
                raise ValueError("invalid baudrate")
            self._baud = baudrate
        if bits != -1:
            self._bits = bits
        if parity != -1:
            self._parity = parity
        if stop != -1:
            self._stop = stop
        if timeout != -1:
            self._timeout = timeout
        if timeout_char != -1:
            self._timeout_char = timeout_char
        p = 0xFF if self._parity is None else int(self._parity)  # type: ignore[call-overload]
        payload = struct.pack("<BIBBB", self._id, self._baud, self._bits, p, self._stop)
        _rig.get().call(rigwire.UART_INIT, payload)

    def deinit(self) -> None:
        pass

    def _wait(self, timeout_ms: int) -> bool:
        return bool(self._poll.poll(timeout_ms))

    def any(self) -> int:
        if not self._wait(0):
            return 0
        return len(self._sock.recv(_PEEK_MAX, _MSG_PEEK))  # type: ignore[call-arg]

    def read(self, nbytes: int = -1) -> bytes | None:
        if not self._wait(self._timeout):
            return None
        out = b""
        while True:
            want = _PEEK_MAX if nbytes < 0 else nbytes - len(out)
            chunk = self._sock.recv(want)
            if not chunk:
                break
            out += chunk
            if len(out) == nbytes or not self._wait(self._timeout_char):
                break
        return out or None

    def readinto(self, buf: bytearray, nbytes: int = -1) -> int | None:
        n = len(buf) if nbytes < 0 else nbytes
        data = self.read(n)
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self) -> bytes | None:
        out = b""
        wait = self._timeout
        while self._wait(wait):
            peek = self._sock.recv(_PEEK_MAX, _MSG_PEEK)  # type: ignore[call-arg]
            if not peek:
                break
            nl = peek.find(b"\n")
            out += self._sock.recv(len(peek) if nl < 0 else nl + 1)
            if nl >= 0:
                break
            wait = self._timeout_char
        return out or None

    def write(self, buf: bytes) -> int:
        self._sock.write(buf)
        return len(buf)

    def flush(self) -> None:
        while not self.txdone():
            _rig.get().wait_ms(1)

    def txdone(self) -> bool:
        return _rig.get().call(rigwire.UART_TXDONE, bytes((self._id,)))[0] == 1

    def sendbreak(self) -> None:
        pass

    def ioctl(self, req: int, arg: int) -> int:
        if req == _MP_STREAM_GET_FILENO:
            fd: int = self._sock.fileno()
            return fd
        if req == _MP_STREAM_POLL:
            ready = 0
            if arg & select.POLLIN and self._wait(0):
                ready |= select.POLLIN
            if arg & select.POLLOUT:
                ready |= select.POLLOUT
            return ready
        if req == _MP_STREAM_CLOSE:
            return 0
        return -1
