# The rig channel: frame kinds shared by the VM side (MicroPython) and the
# supervisor side (CPython). One source of truth for both.
#
# Every frame is `kind:u8 length:u16le payload[length]`. The VM opens one
# control connection per boot (first frame HELLO, a request) and one raw byte
# connection per UART (first frame UART_OPEN; after it the stream carries only
# UART bytes). Requests are answered in order by REPLY or FAIL; everything the
# rig sends unasked (PIN_LEVEL, ...) is an event, queued while a request waits.
#
# Kind ranges (new peripherals take a free number in their range):
#   0x01-0x3F  VM -> rig, core peripherals        0x80-0xBF  rig -> VM, core
#   0x40-0x5F  VM -> rig, bluetooth               0xC0-0xDF  rig -> VM, bluetooth
#   0x60-0x7F  VM -> rig, spare                   0xE0-0xFF  rig -> VM, spare
#
# Payloads (little-endian; "req" = request answered by REPLY/FAIL, "note" = no
# answer):
#   HELLO      req   token:ascii                -> REPLY config:json
#   BOOTED     note  (empty) -- flash mounted, machine installed; boot.py next
#   BOOT_FAILED note reason:utf8 -- the boot script failed (e.g. "MemoryError: ...");
#                    the rig ends this boot and fails the board with the reason
#   PIN_INIT   req   pin:u8 mode:u8 pull:u8 value:u8 (0xFF = none/keep)
#                                               -> REPLY level:u8
#   PIN_WRITE  note  pin:u8 value:u8
#   PIN_IRQ    note  pin:u8 trigger:u8 (0 = off)
#   PWM_INIT   req   pin:u8 freq:u32 duty_u16:u16 (start or change a PWM output)
#   PWM_DEINIT note  pin:u8
#   ADC_READ   req   pin:u8 atten:u8            -> REPLY raw:u16 (0..65535) uv:u32
#   I2C_XFER   req   scl:u8 sda:u8 addr:u8 stop:u8 nread:u16 write:bytes
#                                               -> REPLY read:bytes (no device: FAIL ENODEV)
#   I2C_SCAN   req   scl:u8 sda:u8              -> REPLY addrs:bytes
#   UART_OPEN  first frame of a UART connection: uart:u8 token:ascii
#   UART_INIT  req   uart:u8 baud:u32 bits:u8 parity:u8 stop:u8
#   UART_TXDONE req  uart:u8                    -> REPLY done:u8
#   WDT_START  req   timeout_ms:u32
#   WDT_FEED   note  (empty)
#   RESET      note  how:u8 arg_ms:u32 (RESET_* below) -- the VM then blocks
#                    until the rig kills it and starts the next boot
#   RTC_SET    req   epoch_s:i64
#   RTC_MEMORY req   data:bytes (empty payload = read) -> REPLY data:bytes
#   REPLY      answer to the oldest open request (payload above)
#   FAIL       answer: exc:u8 errno:u16 message:utf8 (exc: 0 OSError, 1 ValueError)
#   PIN_LEVEL  event pin:u8 level:u8 -- an input's level changed
#
# HELLO's config (json): board, reset_cause, wake_reason, unique_id (hex),
# cpu_hz, run_main, rtc_epoch_s, i2c {id: [scl, sda]}, flash {path,
# block_size, block_count, page_size, cut_after}.
try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

HEADER_SIZE = const(3)
MAX_PAYLOAD = const(65535)
NONE8 = const(0xFF)

# VM -> rig
HELLO = const(0x01)
PIN_INIT = const(0x02)
PIN_WRITE = const(0x03)
PIN_IRQ = const(0x04)
PWM_INIT = const(0x05)
PWM_DEINIT = const(0x06)
ADC_READ = const(0x07)
I2C_XFER = const(0x08)
I2C_SCAN = const(0x09)
UART_OPEN = const(0x0A)
UART_INIT = const(0x0B)
UART_TXDONE = const(0x0C)
WDT_START = const(0x0D)
WDT_FEED = const(0x0E)
RESET = const(0x0F)
RTC_SET = const(0x10)
RTC_MEMORY = const(0x11)
BOOTED = const(0x12)
BOOT_FAILED = const(0x13)

# rig -> VM
REPLY = const(0x80)
FAIL = const(0x81)
PIN_LEVEL = const(0x82)

# FAIL exception kinds
EXC_OSERROR = const(0)
EXC_VALUEERROR = const(1)

# RESET how
RESET_SOFT = const(0)  # machine.soft_reset(), sys.exit() in main.py
RESET_HARD = const(1)  # machine.reset()
RESET_DEEPSLEEP = const(2)  # machine.deepsleep(ms); 0 = until a wake pin
RESET_PANIC = const(3)  # the boot script itself failed
RESET_POWER_CUT = const(4)  # the flash's armed fault point was reached (see flashdev.py)
