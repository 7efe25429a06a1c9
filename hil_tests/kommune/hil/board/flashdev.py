# The board's flash: a NOR-flash-like block device over a host file, for
# vfs.VfsLfs2 (the extended block protocol: erase, then program pages).
#
# Each page is programmed with its own write() so that killing the VM (a power
# cut) can land between two pages of one block, as a real power loss can: the
# filesystem must survive a torn block. Erased flash reads 0xFF.
#
# A fault point can be armed (`cut_after`): the power fails during the n-th
# page write (a program, or one page of an erase) of this boot, after half
# of it was written.

_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_BLOCK_ERASE = 6


class FileFlash:
    def __init__(
        self,
        path: str,
        block_size: int,
        block_count: int,
        page_size: int,
        *,
        cut_after: int = -1,
        on_cut: object = None,
    ) -> None:
        # Opened before `/` is mounted: the host filesystem is hidden afterwards.
        self._f = open(path, "r+b")  # noqa: SIM115 - open for the device's lifetime
        self.block_size = block_size
        self.block_count = block_count
        self.page_size = page_size
        self._cut_after = cut_after
        self._on_cut = on_cut
        self._erased = memoryview(b"\xff" * page_size)
        self.writes = 0

    def _program(self, pos: int, data: memoryview) -> None:
        f = self._f
        f.seek(pos)
        self.writes += 1
        if self.writes == self._cut_after:
            f.write(data[: len(data) // 2])
            self._on_cut()  # type: ignore[operator]
        f.write(data)

    def readblocks(self, block: int, buf: bytearray, offset: int = 0) -> None:
        self._f.seek(block * self.block_size + offset)
        self._f.readinto(buf)

    def writeblocks(self, block: int, buf: bytes, offset: int | None = None) -> None:
        if offset is None:
            # Simple protocol (whole blocks): erase first, as a FAT driver expects.
            for i in range(len(buf) // self.block_size):
                self.ioctl(_IOCTL_BLOCK_ERASE, block + i)
            offset = 0
        mv = memoryview(buf)
        page = self.page_size
        pos = block * self.block_size + offset
        for start in range(0, len(buf), page):
            self._program(pos + start, mv[start : start + page])

    def ioctl(self, op: int, arg: int) -> int:
        if op == _IOCTL_BLOCK_COUNT:
            return self.block_count
        if op == _IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == _IOCTL_BLOCK_ERASE:
            base = arg * self.block_size
            for start in range(0, self.block_size, self.page_size):
                self._program(base + start, self._erased)
        return 0
