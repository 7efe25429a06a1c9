# The street lamp's firmware (README.md). Hardware is made here and handed in.
import asyncio

import config
import machine
from app import CLASSES, LampApp
from common.node import SETTINGS, Node
from common.settings import Settings
from dimmer import Dimmer
from machine import ADC, PWM, UART, Pin
from meter import Meter
from presence import PresenceInput
from scenes import Scenes

from kommune.protocols import runtime


def main() -> None:
    settings = Settings(SETTINGS + config.SETTINGS)
    # Light first: the power-on level before anything else can go wrong.
    dimmer = Dimmer(PWM(Pin(config.PIN_PWM), freq=settings["pwm_hz"], duty_u16=0))
    dimmer.floor = settings["floor_level"]
    dimmer.set(settings["power_on_level"])
    node = Node(
        UART(config.LINK_UART, config.LINK_BAUD),
        machine.WDT(timeout=settings["wdt_ms"]),
        kind=runtime.KIND_LAMP,
        version=config.VERSION,
        classes=CLASSES,
        settings=settings,
        reset_cause=machine.reset_cause(),
        uid=machine.unique_id(),
    )
    app = LampApp(
        node,
        dimmer=dimmer,
        presence=PresenceInput(Pin(config.PIN_PRESENCE, Pin.IN, Pin.PULL_DOWN)),
        meter=Meter(ADC(Pin(config.PIN_CURRENT), atten=ADC.ATTN_11DB), dimmer, settings),
        scenes=Scenes(),
    )
    asyncio.run(node.run(app.tasks()))


main()
