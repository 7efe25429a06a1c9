# What a board's ROM and MicroPython's port main do before the REPL, for the
# emulated board (called by start.py):
#   open the rig channel, load the peripheral emulation -- before `/` is
#   mounted, as the host filesystem is hidden afterwards --, mount the flash
#   (formatting it on the first boot), then run boot.py and main.py from it
#   like pyexec_file does. If booting fails, the rig is told why (BOOT_FAILED).
import sys

_FIRST_BOOT_PY = b"# This file is executed on every boot (including wake-boot from deepsleep)\n"


def _mount(config: dict) -> None:
    import os

    import vfs

    from . import flashdev, rigwire

    def cut() -> None:
        import machine

        machine._reset(rigwire.RESET_POWER_CUT)  # type: ignore[attr-defined]

    f = config["flash"]
    dev = flashdev.FileFlash(
        f["path"],
        f["block_size"],
        f["block_count"],
        f["page_size"],
        cut_after=f["cut_after"],
        on_cut=cut,
    )
    # (The stubs want a vfs.AbstractBlockDev, a class the VM does not have.)
    vfs.umount("/")  # the unix port's host filesystem
    try:
        vfs.mount(vfs.VfsLfs2(dev), "/")  # type: ignore[abstract,arg-type]
    except OSError:
        # First boot: as the ESP32 port's inisetup, format only a blank flash;
        # anything else may be someone's data.
        if not _blank(dev):
            raise OSError("the flash holds no littlefs filesystem and is not blank") from None
        vfs.VfsLfs2.mkfs(dev)  # type: ignore[arg-type]
        vfs.mount(vfs.VfsLfs2(dev), "/")  # type: ignore[abstract,arg-type]
        with open("/boot.py", "wb") as fp:
            fp.write(_FIRST_BOOT_PY)
    os.chdir("/")


def _blank(dev: object) -> bool:
    # Erased (all 0xFF) or all zeros, the host's rule too (flash.classify).
    # A small buffer: a first boot runs on the smallest heap.
    buf = bytearray(512)
    mv = memoryview(buf)
    dev.readblocks(0, buf)  # type: ignore[attr-defined]
    fill = buf[0]
    if fill not in (0, 0xFF):
        return False
    for block in range(dev.block_count):  # type: ignore[attr-defined]
        for offset in range(0, dev.block_size, len(buf)):  # type: ignore[attr-defined]
            dev.readblocks(block, buf, offset)  # type: ignore[attr-defined]
            if buf[0] != fill or mv[1:] != mv[:-1]:
                return False
    return True


def _optional_bluetooth() -> object:
    try:
        from . import bluetooth
    except ImportError:  # a rig without the radio
        return None
    return bluetooth


def _boot(rig_path: str, token: str) -> bool:
    import json

    from . import rig, rigwire

    # The channel first: a failure from here on reaches the rig (`_report`).
    channel = rig.Rig(rig_path, token)
    rig.attach(channel)
    config = json.loads(channel.call(rigwire.HELLO, token.encode()))
    channel.config = config
    # Everything is imported before the mount: the host filesystem goes then.
    from . import aiohook, emutime, machine

    radio = _optional_bluetooth()
    emutime.set_drift(config.get("clock_ppm", 0))
    emutime.set_rtc(config["rtc_epoch_s"])
    _mount(config)
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.modules["machine"] = machine
    sys.modules["time"] = emutime
    if radio is not None:
        sys.modules["bluetooth"] = radio  # type: ignore[assignment]
    aiohook.install()
    # Forget the package name: firmware may have its own `board` module.
    for name in list(sys.modules):
        if name == "board" or name.startswith("board."):
            del sys.modules[name]
    channel.send(rigwire.BOOTED)
    run_main: bool = config["run_main"]
    return run_main


def _run(path: str, g: dict) -> None:
    """Run a file from flash in the REPL's globals, like pyexec_file.

    A KeyboardInterrupt is printed and passed on: Ctrl-C stops the boot."""
    try:
        with open(path) as fp:
            source = fp.read()
    except OSError:
        return
    try:
        exec(compile(source, path, "exec"), g)
    except SystemExit:
        # As on a board: sys.exit() in boot.py/main.py is a soft reset.
        import machine

        machine.soft_reset()
    except KeyboardInterrupt as e:
        sys.print_exception(e)
        raise
    except BaseException as e:  # print it, as the board's pyexec does
        sys.print_exception(e)


def _report(e: BaseException) -> None:
    """Tell the rig why the boot failed, if the channel is up (else its timeout says it)."""
    import gc

    gc.collect()  # the failure may be a MemoryError
    try:
        from . import rig, rigwire

        text = str(e)
        reason = type(e).__name__ + (": " + text if text else "")
        rig.get().send(rigwire.BOOT_FAILED, reason.encode()[:400])
    except Exception:  # nothing left to tell it with
        pass


def start(g: dict) -> None:
    """Boot; `g` are the REPL's globals (boot.py and main.py run in them)."""
    try:
        run_main = _boot(sys.argv[1], sys.argv[2])
    except BaseException as e:  # the rig ends this boot and says why
        sys.print_exception(e)
        _report(e)
        return
    # From BOOTED on, the console passes Ctrl-C on as SIGINT. Wherever it lands
    # -- in boot.py, main.py or the rig's few lines between them -- booting
    # stops and the REPL opens, so a client's Ctrl-C right after a boot always
    # reaches the prompt. (An ESP32 would still run main.py after an
    # interrupted boot.py; this board is deterministic instead.)
    import micropython

    try:
        _run("boot.py", g)
        if run_main:
            _run("main.py", g)
        micropython.kbd_intr(-1)  # the REPL's now: a Ctrl-C is a byte at its prompt
    except KeyboardInterrupt:
        micropython.kbd_intr(-1)
    g.pop("bootseq", None)  # start.py's import: leave the REPL's globals clean
