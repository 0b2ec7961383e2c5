"""Enrolment: turn a CSV of households and a folder of photos into bundle contents.

CSV (UTF-8, header row; extra columns are ignored)::

    household_id,member_id,role,name,regency,photos[,amount]
    KPM-3171-0001-0001,M1,recipient,Siti Aminah,3171,siti1.jpg;siti2.jpg
    KPM-3171-0001-0001,M2,representative,Budi Santoso,3171,budi.jpg

``photos`` lists files relative to the photo folder, separated by ``;``. Each photo passes the
face engine's quality gates or is refused; each good face is checked 1:N against every face
already enrolled under *another* household and refused as a duplicate above the threshold
(one person claiming for several households). The name is used only to make the masked
display name; no report line, log line or bundle field carries it.

The face engine is injected as ``analyse(rgb) -> (embedding | None, reason)`` so this module
does not depend on the vision code (tests use a fake; the CLI wires ``FaceEngine``).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.enrolment.bundle import Household, Member
from edge.enrolment.bundle_body import DIM, ROLES
from edge.errors import ClaimError, EnrolmentError
from edge.payout.claim import validate_household_id
from edge.privacy import mask_id, mask_name

log = logging.getLogger(__name__)

Analyse = Callable[[np.ndarray], tuple[np.ndarray | None, str]]
Progress = Callable[[int, int], None]
REQUIRED_COLUMNS = ("household_id", "member_id", "role", "name", "regency", "photos")
_MEMBER_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")  # fullmatch: "$" would take a final newline


@dataclass(frozen=True)
class Row:
    """One CSV line: one member of a household and their photos."""

    line: int
    household_id: str
    member_id: str
    role: str
    name: str
    regency: str
    photos: tuple[str, ...]
    amount: int | None = None


@dataclass(frozen=True)
class ReportLine:
    """What happened to one photo or row; never a name."""

    household_id: str
    member_id: str
    photo: str
    status: str  # enrolled | refused | duplicate | invalid
    reason: str

    def text(self) -> str:
        return (
            f"{self.status:<9} {self.household_id:<22} {self.member_id:<8} "
            f"{self.photo:<8} {self.reason}"
        )


@dataclass
class EnrolmentResult:
    """Households, templates and the report of one enrolment run."""

    households: list[Household]
    labels: list[str]
    matrix: np.ndarray
    report: list[ReportLine] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.report:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def report_text(self) -> str:
        """The report for the operator: refusals first, then a summary."""
        bad = [r for r in self.report if r.status != "enrolled"]
        lines = [f"{'status':<9} {'household':<22} {'member':<8} {'photo':<8} reason"]
        lines += [r.text() for r in bad]
        members = sum(len(h.members) for h in self.households)
        c = self.counts()
        lines.append(
            f"enrolled: {len(self.households)} households, {members} members, "
            f"{len(self.labels)} templates; refused photos: {c.get('refused', 0)}, "
            f"duplicates: {c.get('duplicate', 0)}, invalid rows: {c.get('invalid', 0)}"
        )
        return "\n".join(lines)

    def write_report_csv(self, path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["status", "household_id", "member_id", "photo", "reason"])
            for r in self.report:
                w.writerow([r.status, r.household_id, r.member_id, r.photo, r.reason])


def read_csv(path: Path | str) -> tuple[list[Row], list[ReportLine]]:
    """Parse the enrolment CSV; bad rows become ``invalid`` report lines, not exceptions."""
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise EnrolmentError(f"{path}: cannot read: {exc.strerror}") from exc
    rows: list[Row] = []
    bad: list[ReportLine] = []
    seen: set[tuple[str, str]] = set()
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EnrolmentError(f"{path}: missing column(s): {', '.join(missing)}")
        for n, rec in enumerate(reader, start=2):
            hid = (rec.get("household_id") or "").strip()
            mid = (rec.get("member_id") or "").strip()
            problem = _row_problem(rec, hid, mid, seen)
            if problem:
                bad.append(ReportLine(hid or f"line {n}", mid or "-", "-", "invalid", problem))
                continue
            seen.add((hid, mid))
            amount = (rec.get("amount") or "").strip()
            rows.append(
                Row(
                    line=n,
                    household_id=hid,
                    member_id=mid,
                    role=rec["role"].strip().lower(),
                    name=(rec.get("name") or "").strip(),
                    regency=(rec.get("regency") or "").strip(),
                    photos=tuple(p.strip() for p in rec["photos"].split(";") if p.strip()),
                    amount=int(amount) if amount else None,
                )
            )
    return rows, bad


def _row_problem(rec: dict, hid: str, mid: str, seen: set[tuple[str, str]]) -> str | None:
    try:
        validate_household_id(hid)
    except ClaimError as exc:
        return str(exc)
    if not _MEMBER_RE.fullmatch(mid):
        return "member id must be 1-32 characters of A-Z, a-z, 0-9, '_' and '-'"
    if (hid, mid) in seen:
        return "member listed twice"
    if (rec.get("role") or "").strip().lower() not in ROLES:
        return f"role must be one of {', '.join(ROLES)}"
    regency = (rec.get("regency") or "").strip()
    if regency and not re.fullmatch(r"[0-9]{4}", regency):
        return "regency must be a 4-digit BPS code"
    if not (rec.get("photos") or "").strip():
        return "no photo listed"
    amount = (rec.get("amount") or "").strip()
    if amount and not (amount.isdigit() and int(amount) > 0):
        return "amount must be a positive whole number of rupiah"
    return None


def load_photo(path: Path) -> np.ndarray | None:
    """Read an image file as RGB uint8, or None when it cannot be decoded."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def enrol(
    rows: list[Row],
    photos_dir: Path | str,
    analyse: Analyse,
    *,
    amount: int,
    duplicate_threshold: float,
    default_regency: str,
    progress: Progress | None = None,
    load: Callable[[Path], np.ndarray | None] = load_photo,
) -> EnrolmentResult:
    """Analyse every photo, refuse poor and duplicate faces, and collect the households."""
    photos_dir = Path(photos_dir)
    total = sum(len(r.photos) for r in rows)
    done = 0
    templates = _Templates()
    report: list[ReportLine] = []
    enrolled_members: dict[str, list[Row]] = {}
    for row in rows:
        good = 0
        for i, name in enumerate(row.photos, start=1):
            vec = _analyse_photo(photos_dir, name, analyse, load)
            line = _enrol_photo(row, f"#{i}", vec, templates, duplicate_threshold)
            good += line.status == "enrolled"
            report.append(line)
            done += 1
            if progress:
                progress(done, total)
        if good:
            enrolled_members.setdefault(row.household_id, []).append(row)
        else:
            report.append(
                ReportLine(row.household_id, row.member_id, "-", "refused", "no usable photo")
            )
    households = _households(enrolled_members, amount, default_regency, report)
    return EnrolmentResult(households, templates.labels, templates.matrix(), report)


@dataclass
class _Templates:
    """The faces enrolled so far: a label, a unit vector and the owning household each."""

    labels: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)  # for the 1:N duplicate check

    def add(self, row: Row, vec: np.ndarray) -> None:
        self.labels.append(f"{row.household_id}/{row.member_id}")
        self.vectors.append(vec)
        self.owners.append(row.household_id)

    def matrix(self) -> np.ndarray:
        if not self.vectors:
            return np.zeros((0, DIM), np.float32)
        return np.stack(self.vectors).astype(np.float32)


def _enrol_photo(
    row: Row, photo: str, vec: np.ndarray | str, templates: _Templates, threshold: float
) -> ReportLine:
    """Enrol one analysed photo (``vec``, or the reason it was refused) unless it is a duplicate."""
    if isinstance(vec, str):
        return ReportLine(row.household_id, row.member_id, photo, "refused", vec)
    dup = _duplicate_of(vec, templates.vectors, templates.owners, row.household_id, threshold)
    if dup:
        other, score = dup
        log.warning(
            "duplicate face: %s matches %s at %.2f",
            mask_id(row.household_id),
            mask_id(other),
            score,
        )
        reason = f"face already enrolled under household {other} (score {score:.2f})"
        return ReportLine(row.household_id, row.member_id, photo, "duplicate", reason)
    templates.add(row, vec)
    return ReportLine(row.household_id, row.member_id, photo, "enrolled", "ok")


def _households(
    enrolled_members: dict[str, list[Row]],
    amount: int,
    default_regency: str,
    report: list[ReportLine],
) -> list[Household]:
    """One household per id with an enrolled member, named after its recipient if enrolled.

    A household whose recipient has no usable photo is kept (its representative may collect)
    but noted in ``report``.
    """
    households = []
    for hid, members in enrolled_members.items():
        recipient = next((m for m in members if m.role == "recipient"), None)
        if recipient is None:
            report.append(
                ReportLine(hid, "-", "-", "warning", "recipient not enrolled: representative only")
            )
        named = recipient or members[0]
        households.append(
            Household(
                household_id=hid,
                masked_name=mask_name(named.name),
                regency=named.regency or default_regency,
                amount=named.amount or amount,
                members=[Member(m.member_id, m.role) for m in members],
            )
        )
    return households


def _analyse_photo(folder: Path, name: str, analyse: Analyse, load) -> np.ndarray | str:
    """The unit embedding of a photo's face, or the reason it is refused."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return "photo path leaves the photo folder"
    path = folder / rel
    if not path.is_file():
        return "photo file not found"
    rgb = load(path)
    if rgb is None:
        return "not a readable image"
    vec, reason = analyse(rgb)
    if vec is None:
        return reason or "no usable face"
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vec))
    if vec.shape[0] != DIM or not np.isfinite(norm) or norm == 0:
        return "face engine returned an unusable vector"
    return vec / norm


def _duplicate_of(
    vec: np.ndarray, vectors: list[np.ndarray], owners: list[str], household: str, threshold: float
) -> tuple[str, float] | None:
    if not vectors:
        return None
    scores = np.stack(vectors) @ vec
    best_other: tuple[str, float] | None = None
    for idx in np.argsort(-scores):
        if scores[idx] < threshold:
            break
        if owners[idx] != household:
            best_other = (owners[idx], float(scores[idx]))
            break
    return best_other


def engine_analyse(engine) -> Analyse:
    """Adapt ``edge.vision.pipeline.FaceEngine`` to ``analyse(rgb) -> (embedding, reason)``."""

    def analyse(rgb: np.ndarray) -> tuple[np.ndarray | None, str]:
        result = engine.analyse(rgb)
        if result is None:
            return None, "no face found"
        if result.embedding is None:
            reasons = ", ".join(result.quality.reasons) or "quality gates failed"
            return None, f"poor quality: {reasons}"
        return result.embedding, "ok"

    return analyse
