# Files on the node's flash that must never be seen half-written.
#
# write_atomic: the new content goes to a temporary file, then os.rename()
# puts it in place. On littlefs (the ESP32 port's filesystem, and the emulated
# board's) a rename is atomic and a file's content is committed when it is
# closed: after a power cut at any instant the path holds the old content or
# the new one, never a mix.
import os


def write_atomic(path: str, data: "bytes | bytearray | memoryview") -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def read(path: str) -> "bytes | None":
    # The file's content, or None if there is no such file.
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def ensure_dir(path: str) -> None:
    try:
        os.mkdir(path)
    except OSError:
        pass  # exists already
