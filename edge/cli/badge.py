"""``edge badge``: staff badges, reason cards and override evidence (central's side)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge.errors import BadgeError


def register(sub) -> None:
    p = sub.add_parser("badge", help="staff badges and reason cards for supervised overrides")
    bsub = p.add_subparsers(dest="badge_command", metavar="ACTION", required=True)
    i = bsub.add_parser("issue", help="sign a staff badge with the central key")
    i.add_argument("--central-key", required=True, type=Path, help="central Ed25519 private key")
    i.add_argument("--staff-id", required=True, help="staff work number, e.g. PTG-0001")
    i.add_argument("--role", required=True, help="officer, supervisor or auditor")
    i.add_argument("--regency", required=True, help="BPS regency code the badge is for")
    i.add_argument("--days", type=float, default=365.0, help="validity in days (365)")
    i.add_argument("--png", type=Path, help="also write the printable badge card")
    i.set_defaults(func=cmd_issue)
    v = bsub.add_parser("verify", help="check a badge against central's public key")
    v.add_argument("--central-pub", required=True, type=Path, help="central public key PEM")
    v.add_argument("text", nargs="?", help="the badge's QR text")
    v.add_argument("--image", type=Path, help="or a photo / PNG of the badge")
    v.set_defaults(func=cmd_verify)
    r = bsub.add_parser("reason-cards", help="print the reason cards (PNG each and one PDF)")
    r.add_argument("--out", required=True, type=Path, help="folder to write them to")
    r.set_defaults(func=cmd_reason_cards)
    k = bsub.add_parser("evidence-key", help="make central's X25519 key for sealed evidence")
    k.add_argument("path", type=Path, help="private key file to write (0600)")
    k.set_defaults(func=cmd_evidence_key)
    o = bsub.add_parser("open-evidence", help="decrypt an evidence box central received")
    o.add_argument("--key", required=True, type=Path, help="central's X25519 evidence key")
    o.add_argument("box", type=Path, help="the JSON box (the evidence command's result)")
    o.add_argument("--out", required=True, type=Path, help="JPEG to write")
    o.set_defaults(func=cmd_open_evidence)


def cmd_issue(args) -> int:
    from edge.enrolment.badges import issue_badge, render_badge_png
    from edge.keys import load_central_private_key

    key = load_central_private_key(args.central_key)
    text = issue_badge(key, args.staff_id, args.role, args.regency, valid_days=args.days)
    if args.png:
        render_badge_png(text, args.png, args.staff_id, args.role)
        print(f"badge card written to {args.png}")
    print(text)
    return 0


def cmd_verify(args) -> int:
    from edge.enrolment.badges import verify_badge

    text = args.text
    if args.image is not None:
        import cv2

        from edge.vision.qr import QrReader

        bgr = cv2.imread(str(args.image))
        if bgr is None:
            raise BadgeError(f"{args.image}: not an image")
        text = QrReader().read(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not text:
        raise BadgeError("no badge given (text or --image)")
    badge = verify_badge(text, args.central_pub.read_bytes(), time.time())
    print(
        f"valid badge {badge.badge_id}: staff {badge.staff_id}, role {badge.role}, "
        f"regency {badge.regency}, expires {badge.expires.isoformat()}"
    )
    return 0


def cmd_reason_cards(args) -> int:
    from edge.enrolment.badges import render_reason_cards

    for path in render_reason_cards(args.out):
        print(path)
    return 0


def cmd_evidence_key(args) -> int:
    from edge.payout.evidence import generate_evidence_key

    print("evidence_key (for the override policy):", generate_evidence_key(args.path))
    return 0


def cmd_open_evidence(args) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    from edge.payout.evidence import open_sealed

    key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise BadgeError(f"{args.key}: not an X25519 private key")
    box = json.loads(args.box.read_text())
    args.out.write_bytes(open_sealed(box.get("evidence", box), key))
    print(f"face crop written to {args.out}")
    return 0
