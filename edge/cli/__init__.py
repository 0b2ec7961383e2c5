"""Command-line registry: each module adds its sub-commands with ``register(subparsers)``."""

# Keep this list in one place so `edge --help` shows every command, grouped by capability.
COMMAND_MODULES = (
    "edge.cli.face",  # enroll, verify, identify, eval, calibrate
    "edge.cli.run",  # run
    "edge.cli.payout",  # bundle, keys, central-keygen, claim-qr
    "edge.cli.audit",  # audit
    "edge.cli.devices",  # receipt, camera-test, printer-test, signals-test
    "edge.cli.mqtt",  # consume, command
    "edge.cli.registry",  # registry build, revoke, show, acl, install, publish
    "edge.cli.badge",  # badge issue, verify, reason-cards, evidence-key, open-evidence
    "edge.cli.central",  # central serve, register, user, reconcile, verify
    "edge.cli.ops",  # check-config, selftest, health
    "edge.cli.retention",  # prune
    "edge.cli.bench",  # bench
    "edge.cli.release",  # release keygen|build|verify|install|apply|recover|status|rollout
)
