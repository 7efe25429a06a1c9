# The lamp's 16 scenes in flash: /lamp/scenes.bin, 16 bytes, byte n = the
# level of scene n (255 = MASK: this lamp is not in the scene), replaced
# atomically. No file: in no scene.
from common import files

from kommune.protocols.lamp import SCENES

PATH = "/lamp/scenes.bin"


class Scenes:
    def __init__(self, path: str = PATH) -> None:
        self.path = path
        raw = files.read(path)
        self.levels = bytearray(raw) if raw is not None and len(raw) == SCENES else None
        if self.levels is None:
            self.levels = bytearray(b"\xff" * SCENES)

    def level(self, scene: int) -> int:
        return self.levels[scene]  # type: ignore[index]

    def store(self, scene: int, level: int) -> None:
        # Raises OSError if the flash write fails (then nothing changed).
        levels = bytearray(self.levels)  # type: ignore[arg-type]
        levels[scene] = level
        if levels != self.levels:
            files.ensure_dir("/lamp")
            files.write_atomic(self.path, levels)
            self.levels = levels
