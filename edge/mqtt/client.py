"""One place that builds a paho-mqtt 2 client: MQTT 5, mutual TLS, persistent session."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


@dataclass
class BrokerSettings:
    """Where and how to connect; built from MqttConfig on the device, from flags centrally."""

    host: str = "localhost"
    port: int = 1883
    tls: bool = True
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    keepalive_s: int = 30

    @classmethod
    def from_config(cls, mqtt_cfg) -> BrokerSettings:
        """Settings from ``cfg.mqtt`` (an ``edge.config.central.MqttConfig``)."""
        return cls(
            host=mqtt_cfg.host,
            port=mqtt_cfg.port,
            tls=mqtt_cfg.tls,
            ca_file=str(mqtt_cfg.ca_file or ""),
            cert_file=str(mqtt_cfg.cert_file or ""),
            key_file=str(mqtt_cfg.key_file or ""),
            username=mqtt_cfg.username,
            password=mqtt_cfg.password.get_secret_value(),
            keepalive_s=mqtt_cfg.keepalive_s,
        )


def make_client(
    client_id: str,
    settings: BrokerSettings,
    *,
    reconnect_max_s: float = 60.0,
    will: tuple[str, bytes] | None = None,
) -> mqtt.Client:
    """An MQTT 5 client, TLS configured when ``settings.tls`` (client certificate if given)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(reconnect_max_s)))
    if settings.tls:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert_file:
            # Mutual TLS: the broker takes the username from this certificate's CN.
            ctx.load_cert_chain(settings.cert_file, settings.key_file or None)
        client.tls_set_context(ctx)
    if settings.username:
        client.username_pw_set(settings.username, settings.password or None)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def session_properties(expiry_s: int) -> Properties:
    """CONNECT properties asking the broker to keep our session for ``expiry_s`` seconds."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(expiry_s)
    return props


def connect_async(client: mqtt.Client, settings: BrokerSettings, session_expiry_s: int) -> None:
    """Start connecting in the background; paho's loop thread retries with back-off."""
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=False,
        properties=session_properties(session_expiry_s),
    )
