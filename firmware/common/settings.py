# A node's settings: small integers by name, kept in flash as JSON
# (/node/config.json, replaced atomically) and settable from the edge with
# ConfigSet (key u8, value 1..4 bytes big-endian unsigned); ConfigGet answers
# ConfigValue with the value in 4 bytes. Which keys exist, their ranges and
# defaults is a table the firmware gives (README.md lists them).
import json

from common import files
from kommune.protocols import runtime

PATH = "/node/config.json"


class Settings:
    def __init__(self, table: list, path: str = PATH) -> None:
        # table: (key, name, lo, hi, default) per setting
        self.path = path
        self._by_key: dict = {}
        self.values: dict = {}
        for row in table:
            self._by_key[row[0]] = row
            self.values[row[1]] = row[4]
        self.load()

    def load(self) -> None:
        # The file's values over the defaults; a broken file or value: the default.
        raw = files.read(self.path)
        if raw is None:
            return
        try:
            given = json.loads(raw)
        except ValueError:
            return
        if not isinstance(given, dict):
            return
        for _, name, lo, hi, _ in self._by_key.values():
            v = given.get(name)
            if isinstance(v, int) and lo <= v <= hi:
                self.values[name] = v

    def __getitem__(self, name: str) -> int:
        v: int = self.values[name]
        return v

    def set(self, key: int, value: "bytes | bytearray") -> int:
        # A ConfigSet: ACKED (0), or the nack code. Saved before it is acked.
        row = self._by_key.get(key)
        if row is None:
            return runtime.NACK_UNKNOWN_KEY
        if not 1 <= len(value) <= 4:
            return runtime.NACK_BAD_LENGTH
        v = 0
        for b in value:
            v = v << 8 | b
        if not row[2] <= v <= row[3]:
            return runtime.NACK_BAD_VALUE
        if self.values[row[1]] != v:
            values = dict(self.values)
            values[row[1]] = v
            try:
                files.ensure_dir("/node")
                files.write_atomic(self.path, json.dumps(values).encode())
            except OSError:
                return runtime.NACK_STORAGE  # nothing changed
            self.values = values
        return 0

    def get(self, key: int) -> "bytes | None":
        # The ConfigValue bytes for key (u32, big-endian), None if unknown.
        row = self._by_key.get(key)
        if row is None:
            return None
        return self.values[row[1]].to_bytes(4, "big")
