"""Topic names of the MQTT contract: ``{prefix}/{regency}/{device}/{leaf}``."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "bansos/v1"
# The same alphabets as device.id and device.regency in edge/config.py and the JSON Schemas.
DEVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{2,62}")
REGENCY_RE = re.compile(r"[0-9]{4}")


@dataclass(frozen=True)
class Topics:
    """The topics of one terminal."""

    regency: str
    device_id: str
    prefix: str = DEFAULT_PREFIX

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.regency}/{self.device_id}"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def commands(self) -> str:
        """Filter for every command addressed to this terminal."""
        return f"{self.base}/cmd/+"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    @property
    def regency_events(self) -> str:
        """Filter for the events of every terminal in this regency (claims sync)."""
        return f"{self.prefix}/{self.regency}/+/event"


def result_topic(command_topic: str) -> str:
    """Where the answer to a command published on ``command_topic`` goes."""
    return f"{command_topic}/result"


def all_events(prefix: str = DEFAULT_PREFIX) -> str:
    """Filter for every event of every terminal."""
    return f"{prefix}/+/+/event"


def all_reports(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Filters for every terminal's health and status reports (their heads, for central) and
    answers to central's resend commands."""
    return [f"{prefix}/+/+/health", f"{prefix}/+/+/status", f"{prefix}/+/+/cmd/resend/result"]


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription: the broker gives each message to one group member."""
    if not group or any(c in group for c in "/+#"):
        raise ValueError("share group name must be non-empty without '/', '+' or '#'")
    return f"$share/{group}/{topic_filter}"


def split(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str, str] | None:
    """``(regency, device_id, leaf)`` of a contract topic, or None when it is not one."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/", 2)
    if len(parts) != 3 or not all(parts):
        return None
    # fullmatch: "$" would also take a trailing newline.
    if not (REGENCY_RE.fullmatch(parts[0]) and DEVICE_ID_RE.fullmatch(parts[1])):
        return None
    return parts[0], parts[1], parts[2]
