"""Command-line registry: each module adds its sub-commands with ``register(subparsers)``."""

# Keep this list in one place so `edge --help` shows every command, grouped by capability.
COMMAND_MODULES = (
    "edge.cli.face",  # enroll, verify, identify, eval, calibrate
    "edge.cli.run",  # run
    "edge.cli.payout",  # bundle, audit, keys, claim-qr
    "edge.cli.devices",  # receipt, camera-test
    "edge.cli.mqtt",  # consume
    "edge.cli.ops",  # check-config, selftest, keys
    "edge.cli.bench",  # bench
)
