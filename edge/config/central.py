"""The sections about central: the MQTT link, the key that signs bundles and commands, updates."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from edge.config.base import ConfigPath, OptionalPath, Problem, Section


class MqttConfig(Section):
    """The link to central: events out, commands in."""

    enabled: bool = Field(default=False, description="Off: events wait in the ledger outbox")
    host: str = Field(default="localhost", description="Broker host name")
    port: int = Field(
        default=1883, ge=1, le=65535, description="Broker port (8883 for TLS, usually)"
    )
    tls: bool = Field(default=True, description="Mutual TLS; plain TCP only for a lab")
    ca_file: OptionalPath = Field(
        default=None, description="CA certificate of the broker (unset: the system's CAs)"
    )
    cert_file: OptionalPath = Field(
        default=None, description="This terminal's client certificate, issued by the central CA"
    )
    key_file: OptionalPath = Field(
        default=None, description="Private key of the client certificate (made at provisioning)"
    )
    username: str = Field(
        default="", description="Broker user name; with mutual TLS the broker takes the CN"
    )
    password: SecretStr = Field(
        default=SecretStr(""), description="Broker password (hidden in check-config output)"
    )
    keepalive_s: int = Field(default=30, ge=5, description="MQTT keep-alive interval, seconds")
    health_interval_s: float = Field(
        default=60.0, gt=0, description="Seconds between health reports to central"
    )
    topic_prefix: str = Field(
        default="bansos/v1",
        pattern=r"^[^/+#\s]+(/[^/+#\s]+)*$",
        description="First levels of every topic (no wildcards, no leading or trailing '/')",
    )

    def problems(self) -> list[Problem]:
        """Settings an enabled link cannot connect with."""
        if not self.enabled:
            return []
        found = []
        if not self.host.strip():
            found.append(Problem(("host",), "mqtt is enabled: set the broker's host name"))
        if self.tls and self.cert_file is None:
            found.append(
                Problem(
                    ("cert_file",),
                    "tls is on: set the client certificate issued by the central CA "
                    "(or tls = false for a lab broker)",
                )
            )
        if self.tls and self.key_file is None:
            found.append(
                Problem(
                    ("key_file",),
                    "tls is on: set the client certificate's private key "
                    "(provisioning makes state_dir/keys/tls_key.pem)",
                )
            )
        if self.password.get_secret_value() and not self.username.strip():
            found.append(
                Problem(("password",), "a password is only sent with a username: set mqtt.username")
            )
        return found


class BundleConfig(Section):
    """Enrolment bundles and commands from central."""

    central_public_key: OptionalPath = Field(
        default=None,
        description="PEM file with central's Ed25519 public key, which signs bundles and "
        "commands; unset: bundles cannot be verified and remote commands are off",
    )


class OtaConfig(Section):
    """Fleet updates: signed releases from central, installed side by side (edge/ota)."""

    release_public_key: OptionalPath = Field(
        default=None,
        description="PEM file with the release Ed25519 public key, installed at provisioning; "
        "it must not be central's bundle key. Unset: update commands are refused",
    )
    root: ConfigPath = Field(
        default=Path("/opt/edge"),
        description="Prefix holding releases/<version>, the current and previous links",
    )
    ca_file: OptionalPath = Field(
        default=None,
        description="The only CA trusted for HTTPS release downloads (pinned); unset: "
        "releases arrive only in chunks over MQTT",
    )
    max_bytes: int = Field(
        default=1 << 30, gt=0, description="Largest release artefact accepted, bytes"
    )
    confirm_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds a new release has to pass selftest and READY"
    )
    apply_wait_s: float = Field(
        default=1800.0,
        gt=0,
        description="Seconds the daemon waits for the installer to answer its request "
        "(unpacking a release on a Pi takes minutes; payouts go on meanwhile) before it "
        "reports the update failed",
    )
