"""Test helpers: a throw-away PKI and a real Mosquitto broker on a free loopback port.

``Pki`` makes a test CA, a server certificate for 127.0.0.1 and client certificates whose CN
is the MQTT username (``use_identity_as_username``). ``Broker`` writes a mosquitto.conf with a
mutual-TLS listener (or plain TCP), an ACL that confines each device to its own topics, and
persistence, so it can be stopped and started again on the same port like a real outage.
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import unavailable, wait_for  # noqa: F401 - the MQTT tests import it from here

from edge.mqtt.client import BrokerSettings, connect_async, make_client

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

ACL = """\
# central: reads every event, sends commands
user central
topic readwrite bansos/#

# a device (username = its certificate's CN) writes only under its own id
pattern write bansos/v1/+/%u/event
pattern write bansos/v1/+/%u/status
pattern write bansos/v1/+/%u/health
pattern write bansos/v1/+/%u/cmd/+/result
pattern read bansos/v1/+/%u/cmd/+
pattern read bansos/v1/+/+/event
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Pki:
    """A test certificate authority writing PEM files into ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bansos test CA")])
        self._name = name
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.root / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.issue("localhost", server=True)

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        """Certificate and key files for ``cn`` (a server cert also names 127.0.0.1)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = self.root / f"{cn}.crt"
        key_path = self.root / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path


class Broker:
    """One Mosquitto process; ``stop()`` then ``start()`` again keeps port and sessions."""

    def __init__(self, root: Path, pki: Pki | None = None, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.root / "mosquitto.conf"
        self.log = self.root / "mosquitto.log"
        lines = [
            "per_listener_settings false",
            # Started as root (CI containers), mosquitto would switch to a user that cannot
            # read the test's private temp dir; as any other user this line is ignored.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.root}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            f"listener {self.port} 127.0.0.1",
        ]
        if pki is not None:
            acl = self.root / "acl"
            acl.write_text(ACL)
            lines += [
                f"cafile {pki.ca_file}",
                f"certfile {pki.server_cert}",
                f"keyfile {pki.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                f"acl_file {acl}",
            ]
        else:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts TCP connections."""
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        """Stop mosquitto cleanly (it saves its persistence file on SIGTERM)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, like a power cut: no final save, so only what autosave wrote survives."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def settings(self, client_cn: str | None = None) -> BrokerSettings:
        """Connection settings for a client, with its own certificate under TLS."""
        if self.pki is None:
            return BrokerSettings(host="127.0.0.1", port=self.port, tls=False)
        cert, key = self.pki.issue(client_cn or "central")
        return BrokerSettings(
            host="127.0.0.1",
            port=self.port,
            tls=True,
            ca_file=str(self.pki.ca_file),
            cert_file=str(cert),
            key_file=str(key),
        )

    def mqtt_config(self, client_cn: str) -> dict:
        """The ``[mqtt]`` section of a terminal config for this broker."""
        s = self.settings(client_cn)
        return {
            "enabled": True,
            "host": s.host,
            "port": s.port,
            "tls": s.tls,
            "ca_file": s.ca_file,
            "cert_file": s.cert_file,
            "key_file": s.key_file,
        }


# -- pytest fixtures and fakes shared by tests/test_mqtt*.py --------------------------------


@pytest.fixture(scope="session", name="pki")
def pki_fixture(tmp_path_factory) -> Pki:
    """One test CA (and server certificate) for the whole session; needs Mosquitto (skipped on
    a machine without it, a failure on CI, whose .ci/run installs it)."""
    if not Path(MOSQUITTO).exists():
        unavailable("mosquitto", "apt-get install mosquitto")
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(name="broker")
def broker_fixture(tmp_path, pki):
    """A running mutual-TLS Mosquitto on a free loopback port, stopped after the test."""
    b = Broker(tmp_path / "broker", pki)
    b.start()
    yield b
    b.stop()


class Spy:
    """A central-side MQTT client that keeps every message it receives (a fake with history)."""

    def __init__(self, broker: Broker, topics: list[str], cn: str = "central") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = make_client(f"spy-{cn}-{id(self)}", broker.settings(cn))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        connect_async(self.client, broker.settings(cn), 0)
        self.client.loop_start()
        assert self._subscribed.wait(10), "spy could not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        if self._topics:
            client.subscribe([(t, 1) for t in self._topics])
        else:
            self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(msg)

    def on(self, suffix: str) -> list[dict]:
        """Decoded JSON payloads of messages whose topic ends with ``suffix``."""
        with self._lock:
            return [json.loads(m.payload) for m in self.messages if m.topic.endswith(suffix)]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
