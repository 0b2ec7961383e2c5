"""face_recognition 1.3 (dlib) side of the comparison; runs inside .venv-bench only.

Usage: ``.venv-bench/bin/python bench/facerec_worker.py REQUEST.json RESULT.json``.
The request names the photos; the result holds, per photo, the seconds of each stage and the
128-d encoding of the largest face (or null when dlib found none). It imports nothing from
``edge`` so the two environments never mix: the edge side scores the encodings itself.

The settings are face_recognition's defaults (HOG detector, one upsample, one jitter, the
"large" 68-point landmark model for encodings), which is how Raspberry Pi projects use it.
"""

from __future__ import annotations

import json
import sys
import time


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _largest(boxes):
    # face_recognition boxes are (top, right, bottom, left).
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))


def main(argv: list[str]) -> int:
    """Encode every requested photo and write timings and encodings as JSON."""
    req_path, out_path = argv[1], argv[2]
    with open(req_path) as fh:
        req = json.load(fh)
    # Untyped, and only in .venv-bench; kept out of pyproject so `mypy edge` has no unused entry.
    import dlib  # type: ignore[import-not-found]
    import face_recognition  # type: ignore[import-not-found]

    upsample = int(req.get("upsample", 1))
    model = req.get("model", "hog")
    jitters = int(req.get("jitters", 1))
    results = []
    # One untimed warm-up so model loading is not charged to the first photo.
    if req["photos"]:
        img = face_recognition.load_image_file(f"{req['root']}/{req['photos'][0]}")
        face_recognition.face_encodings(img, num_jitters=jitters)
    for rel in req["photos"]:
        t0 = time.perf_counter()
        img = face_recognition.load_image_file(f"{req['root']}/{rel}")
        t1 = time.perf_counter()
        boxes = face_recognition.face_locations(img, upsample, model)
        t2 = time.perf_counter()
        enc = None
        if boxes:
            vec = face_recognition.face_encodings(img, [_largest(boxes)], jitters)
            enc = [round(float(v), 6) for v in vec[0]] if vec else None
        t3 = time.perf_counter()
        results.append(
            {
                "path": rel,
                "faces": len(boxes),
                "decode_s": t1 - t0,
                "detect_s": t2 - t1,
                "encode_s": t3 - t2,
                "total_s": t3 - t0,
                "encoding": enc,
            }
        )
    info = {
        # The 1.3.0 wheel still says 1.2.3 in __version__: ask the installed distribution.
        "face_recognition": _dist_version("face_recognition"),
        "face_recognition_models": _dist_version("face_recognition_models"),
        "dlib": getattr(dlib, "__version__", "?"),
        "dlib_uses_blas": bool(getattr(dlib, "DLIB_USE_BLAS", False)),
        "settings": {"model": model, "upsample": upsample, "jitters": jitters},
    }
    with open(out_path, "w") as fh:
        json.dump({"info": info, "results": results}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
