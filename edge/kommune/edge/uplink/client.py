"""The MQTT side of the uplink: an aiomqtt client with what the uplink needs of it, and
the messages it publishes (properties, sizes, and decoding for backends).

`MqttClient` adds to aiomqtt's client what aiomqtt does not expose: the PUBACK reason
code of each publish (aiomqtt treats every PUBACK as success, but a refusal such as
0x87 "not authorized" must not count as delivered), publishing without waiting (for the
in-flight window), the CONNACK properties (Receive Maximum, Maximum Packet Size), and a
connect that fails as soon as the connection closes before its CONNACK, with the reason
(aiomqtt waits out its timeout and then says only that), and acknowledging a received
QoS 1 message when its handler is done with it (`manual_ack`: paho would send the PUBACK
as soon as the message arrives, before anything was done with it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import senml

#: The MQTT 5 Content Type of every publish.
CONTENT_TYPE = "application/senml+cbor"
#: User property naming the compression of the payload, if any ("deflate": raw deflate).
CONTENT_ENCODING = "content-encoding"
DEFLATE = "deflate"
#: PUBACK "no matching subscribers": a success code, but nobody got the message.
NO_MATCHING_SUBSCRIBERS = 0x10


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n >>= 7
        size += 1
    return size


def publish_packet_size(topic: str, payload_len: int, properties: Properties | None) -> int:
    """Bytes of an MQTT 5 QoS 1 PUBLISH packet (fixed header included)."""
    props_len = len(properties.pack()) if properties is not None else 1  # type: ignore[no-untyped-call]
    remaining = 2 + len(topic.encode()) + 2 + props_len + payload_len
    return 1 + _varint_len(remaining) + remaining


#: An MQTT 5 PUBACK with reason Success and no properties: header, length, packet id.
PUBACK_BYTES = 4


def publish_properties(deflated: bool) -> Properties:
    """The PUBLISH properties the uplink sets: content type, and encoding if deflated."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = CONTENT_TYPE
    if deflated:
        props.UserProperty = (CONTENT_ENCODING, DEFLATE)
    return props


def records_of(message: aiomqtt.Message) -> list[senml.Record]:
    """Decode a message the uplink published (for backends and tests); `SenmlError`
    if it is not one."""
    props = message.properties
    ctype = getattr(props, "ContentType", CONTENT_TYPE) if props is not None else CONTENT_TYPE
    if ctype != CONTENT_TYPE:
        raise senml.SenmlError(f"content type {ctype!r}, expected {CONTENT_TYPE}")
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    encoding = dict(pairs or []).get(CONTENT_ENCODING)
    if encoding not in (None, DEFLATE):
        raise senml.SenmlError(f"unknown content encoding {encoding!r}")
    payload = message.payload
    if not isinstance(payload, bytes | bytearray):
        raise senml.SenmlError(f"payload is {type(payload).__name__}, not bytes")
    return senml.decode(bytes(payload), deflated=encoding == DEFLATE)


def _ssl_reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc).replace("_", " ").lower()


class MqttClient(aiomqtt.Client):
    """aiomqtt's client with the additions the module docstring lists."""

    def __init__(self, *args: Any, manual_ack: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Received QoS 1 messages get their PUBACK from `ack`, not on arrival.
        self._client.manual_ack_set(manual_ack)
        self._pubacks: dict[int, asyncio.Future[ReasonCode]] = {}
        self.connack_properties: Properties | None = None
        self._closed_early: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._socket_failure: str | None = None

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.connack_properties = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        fut = self._pubacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def connect(self) -> None:
        """Enter the client (connect, CONNACK), failing as soon as the connection closes
        before the CONNACK: aiomqtt would wait out its timeout and then say only that."""
        entering: asyncio.Future[Any] = asyncio.ensure_future(self.__aenter__())
        await asyncio.wait({entering, self._closed_early}, return_when=asyncio.FIRST_COMPLETED)
        if entering.done():
            entering.result()
            return
        entering.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await entering
        raise aiomqtt.MqttError(self._closed_early.result())

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done() and not self._closed_early.done():
            why = self._socket_failure or reason_code
            self._closed_early.set_result(f"connection closed before CONNACK: {why}")
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        failure = getattr(sock, "failure", None)
        if failure is not None:
            self._socket_failure = _ssl_reason(failure)
        super()._on_socket_close(client, userdata, sock)

    def publish_nowait(
        self, topic: str, payload: bytes, properties: Properties
    ) -> asyncio.Future[ReasonCode]:
        """Send a QoS 1 PUBLISH; the future gets the PUBACK's reason code (and never
        resolves if the connection drops first)."""
        info = self._client.publish(topic, payload, 1, False, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        fut: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._pubacks[info.mid] = fut
        return fut

    def ack(self, message: aiomqtt.Message) -> bool:
        """Send the PUBACK of a received QoS 1 message (with `manual_ack`); False if the
        connection is gone (the broker then sends the message again on the next one)."""
        if message.qos == 0:
            return True
        return self._client.ack(message.mid, message.qos) == paho.MQTT_ERR_SUCCESS

    def abort(self) -> None:
        """Close the socket now (idempotent); paho's own close, which also unregisters
        aiomqtt's reader and writer callbacks."""
        self._client._sock_close()

    def forget_disconnect_error(self) -> None:
        """Mark why the connection ended as seen (asyncio logs an unseen one)."""
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()

    def connack_int(self, name: str, default: int) -> int:
        value = getattr(self.connack_properties, name, default)
        return value if isinstance(value, int) else default
