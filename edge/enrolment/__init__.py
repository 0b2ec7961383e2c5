"""Enrolment: who may collect, and with which face.

``bundle`` (the central-signed, device-encrypted enrolment bundle), ``store`` (the installed
bundle, last good one kept), ``roster`` (CSV + photos to bundle contents), ``gallery`` (the
pilot gallery of ``edge enroll --id``).
"""
