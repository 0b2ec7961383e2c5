"""The ledger: the terminal's durable, tamper-evident record.

``store`` (the SQLite ledger and its transactions), ``schema`` (tables and small value types),
``audit`` (``edge audit``: verify a ledger file or an event stream). The rules of a signed
event itself live in :mod:`edge.events`.
"""
