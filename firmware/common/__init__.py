# The node runtime shared by the lock, lamp and parking firmware (runs on the
# board, stock MicroPython APIs only; on a board it lives in /lib/common/).
