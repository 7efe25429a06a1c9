"""The hardware-in-the-loop rig: emulated boards running the real firmware in the real VM.

Processes and ports of one board (supervisor.py, emulated_board.py):

    client side              supervisor (asyncio, many boards)      VM process (one per boot)
    console pty /dev/pts/N - Console relay ---- raw pty -------------- unix port REPL
    link pty    /dev/pts/M - UartLink (paced) - unix socket ----------- machine.UART
                             HandlerTable, models - rig socket ------ machine, bluetooth

* A VM is `python vmlaunch.py -X heapsize=Hw -i board/start.py RIG TOKEN`
  (vmprocess.py): the unix port as a CPython extension, its own pty as the
  controlling terminal, killed with the supervisor. start.py loads the
  emulation modules (board/, precompiled to .mpy), mounts the flash image
  (littlefs2 over a file, flashdev.py) at `/`, runs boot.py and main.py.
* Resets end the VM process; the board starts the next one and prints what
  the chip prints (emulated_board.py). machine.reset_cause() follows the board
  profile (firmware/boards/NAME.json).
* The rig channel (board/rigwire.py) carries `machine` calls to the
  peripheral models (models/) and their events back; bluetooth has its own
  frame range (board/blewire.py, radio/board_ble_bridge.py).

Entry points: `Supervisor` (asyncio), `harness.Rig` / `harness.Board`
(synchronous, for tests and benchmarks), the pytest fixtures in fixtures.py,
and `kommune emulate`.
"""
