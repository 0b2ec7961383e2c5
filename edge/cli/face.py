"""Face sub-commands: enroll, verify, identify (pilot gallery), eval and calibrate (accuracy)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from edge.config import load_config, parse_config
from edge.errors import ConfigError, EdgeError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``edge`` parser."""
    p = sub.add_parser("enroll", help="add a person's face templates to the local pilot gallery")
    p.add_argument("--id", required=True, dest="label", help="identity label to enrol under")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="one or more photos of the person")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("verify", help="1:1: does the photo match an enrolled identity?")
    p.add_argument("photo", metavar="PHOTO")
    p.add_argument("--id", required=True, dest="label", help="enrolled identity to compare with")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("identify", help="1:N: who in the local gallery is this?")
    p.add_argument("photo", metavar="PHOTO")
    p.add_argument("-k", type=int, default=5, help="candidates to list (default 5)")
    p.set_defaults(func=cmd_identify)

    for name, helptext in (
        ("eval", "score a labelled pairs list: EER, TAR at FAR, stage timings"),
        ("calibrate", "pick the match threshold for a target false-match rate"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--pairs", required=True, help="CSV with path_a, path_b, same[, source]")
        p.add_argument("--images", required=True, help="folder the pair paths are relative to")
        p.add_argument("--source", help="only the pairs of this source")
        if name == "eval":
            p.add_argument("--json", dest="json_out", help="also write the report to this file")
            p.add_argument(
                "--repeat",
                type=int,
                default=1,
                help="time each image N times and keep the fastest (steadier ms on a busy machine)",
            )
            p.set_defaults(func=cmd_eval)
        else:
            p.add_argument("--far", type=float, default=0.001, help="target FAR (default 0.001)")
            p.add_argument("--write", metavar="CONFIG", help="set vision.match_threshold here")
            p.set_defaults(func=cmd_calibrate)


def _engine(cfg):
    from edge.vision.pipeline import FaceEngine

    return FaceEngine.from_config(cfg)


def _store(cfg):
    from edge.enrolment.gallery import GalleryStore

    return GalleryStore(cfg.state_path)


def _probe(engine, path: str):
    """Analyse one photo; (result, message) where message says why it cannot be used."""
    from edge.evaluation import load_image

    try:
        rgb = load_image(path)
    except (OSError, ValueError) as exc:
        return None, f"cannot read image: {exc}"
    res = engine.analyse(rgb)
    if res is None:
        return None, "no face found"
    if res.embedding is None:
        return res, f"poor quality ({', '.join(res.quality.reasons)}): {res.quality.describe()}"
    return res, None


def cmd_enroll(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    engine = _engine(cfg)
    vectors, refused = [], 0
    for photo in args.photos:
        res, why = _probe(engine, photo)
        if why:
            print(f"{photo}: refused: {why}")
            refused += 1
            continue
        vectors.append(res.embedding)
        print(f"{photo}: ok (face {res.quality.measures['face_px']:.0f} px)")
    if not vectors:
        print(f"enroll {args.label}: nothing enrolled", file=sys.stderr)
        return 1
    import numpy as np

    count = _store(cfg).add(args.label, np.vstack(vectors), engine.model_id)
    print(f"enrolled {args.label}: {len(vectors)} template(s) added, {count} in total")
    return 0 if not refused else 3


def _decision_line(decision: str, score: float, threshold: float, label: str | None) -> str:
    who = f" id={label}" if label else ""
    return f"decision={decision}{who} score={score:.4f} threshold={threshold:.4f}"


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    engine = _engine(cfg)
    gallery = _store(cfg).gallery(engine.model_id)
    threshold = cfg.vision.match_threshold
    if args.label not in gallery:
        print(f"verify: {args.label} is not enrolled", file=sys.stderr)
        return 1
    res, why = _probe(engine, args.photo)
    if why:
        decision = "no_face" if res is None else "poor_quality"
        print(f"{_decision_line(decision, -1.0, threshold, args.label)} ({why})")
        return 2
    score = gallery.verify(res.embedding, args.label)
    decision = "match" if score >= threshold else "no_match"
    print(_decision_line(decision, score, threshold, args.label))
    return 0 if decision == "match" else 2


def cmd_identify(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    engine = _engine(cfg)
    gallery = _store(cfg).gallery(engine.model_id)
    threshold = cfg.vision.match_threshold
    res, why = _probe(engine, args.photo)
    if why:
        decision = "no_face" if res is None else "poor_quality"
        print(f"{_decision_line(decision, -1.0, threshold, None)} ({why})")
        return 2
    top = gallery.search(res.embedding, k=args.k)
    if not top or top[0][1] < threshold:
        best = top[0][1] if top else -1.0
        print(_decision_line("no_match", best, threshold, None))
        rc = 2
    else:
        print(_decision_line("match", top[0][1], threshold, top[0][0]))
        rc = 0
    for label, score in top:
        print(f"  {label} {score:.4f}")
    return rc


def _run_eval(args: argparse.Namespace, cfg, fars=None) -> dict:
    from edge.evaluation import FARS, evaluate, read_pairs

    pairs = read_pairs(args.pairs, args.source)
    if not pairs:
        raise EdgeError(
            f"{args.pairs}: no pairs" + (f" of source {args.source}" if args.source else "")
        )
    repeat = getattr(args, "repeat", 1)
    return evaluate(_engine(cfg), pairs, Path(args.images), fars=fars or FARS, repeat=repeat)


def cmd_eval(args: argparse.Namespace) -> int:
    from edge.evaluation import format_report

    cfg = load_config(args.config)
    report = _run_eval(args, cfg)
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def set_match_threshold(path: str | Path, threshold: float) -> None:
    """Set ``[vision] match_threshold`` in a TOML file, keeping every other line as it is."""
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else ""
    line = f"match_threshold = {threshold:.4f}"
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*vision\s*\]\s*(#.*)?$")
    any_header = re.compile(r"^\s*\[")
    key = re.compile(r"^\s*match_threshold\s*=")
    start = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += ["[vision]", line]
    else:
        end = next(
            (j for j in range(start + 1, len(lines)) if any_header.match(lines[j])), len(lines)
        )
        hit = next((j for j in range(start + 1, end) if key.match(lines[j])), None)
        if hit is None:
            lines.insert(start + 1, line)
        else:
            lines[hit] = line
    new = "\n".join(lines) + "\n"
    import tomllib

    # Refuse to write a file the terminal could not load afterwards.
    try:
        parse_config(tomllib.loads(new), str(p))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: edit would not be valid TOML: {exc}") from exc
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(p)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edge.evaluation import FARS, format_report

    if not 0 < args.far < 1:
        raise EdgeError(f"--far must be between 0 and 1, not {args.far}")
    cfg = load_config(args.config)
    report = _run_eval(args, cfg, tuple(sorted(set(FARS) | {args.far}, reverse=True)))
    print(format_report(report))
    threshold = report["threshold_at_far"][str(args.far)]
    tar = report["tar_at_far"][str(args.far)]
    if report["impostor"] * args.far < 1:
        print(
            f"warning: {report['impostor']} impostor pairs are too few to measure FAR {args.far}",
            file=sys.stderr,
        )
    print(f"threshold at FAR {args.far}: {threshold:.4f} (TAR {100 * tar:.2f}%)")
    if args.write:
        set_match_threshold(args.write, threshold)
        print(f"wrote vision.match_threshold = {threshold:.4f} to {args.write}")
    return 0
