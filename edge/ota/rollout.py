"""Central's side: choose which terminals get a release, and sign their ``update`` commands.

A rollout is staged: first a device list (the pilot terminals), then a regency, then a
percentage of the fleet. The percentage is a stable hash of the device id, so widening it from
5 % to 25 % keeps the first 5 % in and a re-run sends to the same terminals.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path

from edge.mqtt.commands import sign_command
from edge.mqtt.topics import DEFAULT_PREFIX, Topics
from edge.ota.release import Release, sha256_file

# Two chunk commands per MiB keep each MQTT message under the command size limit.
CHUNK_BYTES = 256 * 1024


def bucket(device_id: str) -> float:
    """Where ``device_id`` falls in [0, 100): the same on every run and every machine."""
    digest = hashlib.sha256(device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def select(
    fleet: dict[str, str],
    *,
    devices: Iterable[str] | None = None,
    regency: str | None = None,
    percent: float | None = None,
) -> dict[str, str]:
    """The terminals (id -> regency) of ``fleet`` a stage reaches; the filters combine (AND)."""
    chosen = dict(fleet)
    if devices is not None:
        wanted = set(devices)
        chosen = {d: r for d, r in chosen.items() if d in wanted}
    if regency is not None:
        chosen = {d: r for d, r in chosen.items() if r == regency}
    if percent is not None:
        chosen = {d: r for d, r in chosen.items() if bucket(d) < percent}
    return chosen


def update_commands(
    central_key,
    release: Release,
    targets: dict[str, str],
    *,
    url: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    chunk_bytes: int = CHUNK_BYTES,
    issued_at: float | None = None,
) -> list[tuple[str, bytes]]:
    """Signed ``update`` commands (topic, payload) for every target.

    With ``url`` each terminal gets one command and fetches over HTTPS; without, the artefact
    goes in chunks over MQTT, one signed command per chunk.
    """
    path = Path(release.path)
    base = {"version": release.version, "size": path.stat().st_size, "sha256": sha256_file(path)}
    if url is not None:
        variants = [{**base, "url": url}]
    else:
        data = path.read_bytes()
        n = max(1, -(-len(data) // chunk_bytes))
        variants = [
            {
                **base,
                "chunk": i,
                "chunks": n,
                "chunk_bytes": chunk_bytes,
                "data": base64.b64encode(data[i * chunk_bytes : (i + 1) * chunk_bytes]).decode(),
            }
            for i in range(n)
        ]
    out = []
    for device_id, regency in sorted(targets.items()):
        topic = Topics(regency, device_id, prefix).command("update")
        out += [
            (topic, sign_command(central_key, device_id, "update", args, issued_at=issued_at))
            for args in variants
        ]
    return out
