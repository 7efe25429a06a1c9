# The parking sensor's firmware (README.md). Hardware is made here and handed in.
import config
import machine
import store
from app import ParkingApp
from machine import I2C, Pin
from qmc5883l import Qmc5883l


def main() -> None:
    import bluetooth

    cfg = config.load()
    node_id, key, why = store.identity()
    if not node_id:
        # Nothing to say that anyone could trust: stay quiet (README.md, provisioning).
        print("parking: unprovisioned (%s)" % why)
        while True:
            machine.lightsleep(60_000)
    sensor = Qmc5883l(I2C(config.I2C_ID, scl=Pin(config.PIN_SCL), sda=Pin(config.PIN_SDA)))
    sensor.init()
    ble = bluetooth.BLE()
    ble.active(True)
    app = ParkingApp(
        ble,
        sensor,
        cfg=cfg,
        node_id=node_id,
        key=key,
        seqs=store.SeqStore(),
        wdt=machine.WDT(timeout=cfg["wdt_ms"]),
        recal=Pin(config.PIN_RECAL, Pin.IN, Pin.PULL_UP),
    )
    app.run()


main()
