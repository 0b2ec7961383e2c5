"""Central's dashboard over the reference consumer's store: progress, alerts, terminal health,
entitlements, reconciliation and logins. See docs/central.md; ``edge central --help``.

Heavy imports (Starlette, uvicorn, argon2) stay in the submodules, so the terminal never
loads them.
"""
