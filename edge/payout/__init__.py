"""One payout, claim to receipt.

``claim`` (the invitation letter's QR payload), ``flow`` (the claim-to-decision state machine
and its ledger write), ``receipts`` (printing after the commit, pending receipts, reprints).
"""
