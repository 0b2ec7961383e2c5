"""Plain-text report of a bench result: the figures, the ratios and the budget verdicts."""

from __future__ import annotations


def _f(v, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ms(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "      -       "
    return f"{s['median']:6.2f} /{s['p90']:6.2f}"


def _pipeline(sec: dict, lines: list[str]) -> None:
    lines.append(
        f"  photos {sec['photos']} (timed: {sec.get('timed_photos')}, best of "
        f"{sec.get('repeats')} runs each), flip view {sec['flip_view']}; "
        f"match: {sec['match_gallery']}"
    )
    lines.append(f"  float: {sec['float']}")
    stages = ("decode", "detect", "align", "quality", "embed", "other", "match", "liveness")
    lines.append(f"  mesh alignment {sec.get('mesh_align')}; align = mesh + warp (below)")
    lines.append(
        "  median / p90 ms  " + "".join(f"{s:>15}" for s in (*stages, "face", "end2end", "capture"))
    )
    for key, v in sec["variants"].items():
        st = v["stages_ms"]
        cells = [_ms(st.get(s)) for s in stages]
        cells += [
            _ms(v["analyse_ms_embedded"]),
            _ms(v["end_to_end_ms"]),
            _ms(v.get("capture_frame_ms")),
        ]
        lines.append(f"  {key:<16}" + "".join(f"{c:>15}" for c in cells))
    first = next(iter(sec["variants"].values()), None)
    if first:
        c = first["counts"]
        lines.append(
            f"  per run: {c['photos']} photos, {c['embedded']} embedded, "
            f"{c['quality_fail']} failed quality (not embedded), {c['no_face']} no face"
        )
        lines.append("  face = detect+align+quality+embed of a face that is embedded (the budget)")
        lines.append("  capture = a frame while capturing: end2end + liveness update (int8 only)")
    lines.append(
        "  align split, median ms: "
        + ", ".join(
            f"{k} mesh {_f((v['stages_ms'].get('mesh') or {}).get('median'))} "
            f"warp {_f((v['stages_ms'].get('warp') or {}).get('median'))}"
            for k, v in sec["variants"].items()
        )
    )


def _facerec(sec: dict, lines: list[str]) -> None:
    info = sec["info"]
    lines.append(
        f"  face_recognition {info['face_recognition']}, dlib {info['dlib']} "
        f"({info['settings']['model']}, upsample {info['settings']['upsample']}), "
        f"CPU/wall {sec.get('cpu_per_wall')}"
    )
    lines.append(
        f"  {sec['photos']} photos, no face in {sec['no_face']}; "
        f"{sec['seconds_per_photo_mean']:.3f} s per photo (mean)"
    )
    lines.append(
        "  median / p90 ms  " + "  ".join(f"{k} {_ms(v)}" for k, v in sec["stages_ms"].items())
    )


def _compare(sec: dict, lines: list[str]) -> None:
    lines.append(f"  pairs: {sec['pairs']} (pairs.csv among the photos used)")
    lines.append(
        f"  {'system':<18}{'source':<11}{'gen':>6}{'imp':>7}{'noface':>7}{'EER':>8}"
        f"{'TAR@1e-2':>10}{'TAR@1e-3':>10}"
    )
    for system, per_src in sec["accuracy"].items():
        for src, r in per_src.items():
            tar = r.get("tar_at_far", {})
            coarse = "*" if r.get("coarse_far", {}).get("0.001") else " "
            lines.append(
                f"  {system:<18}{src:<11}{r['genuine']:>6}{r['impostor']:>7}{r['no_face']:>7}"
                f"{_f(r['eer'], '{:.4f}'):>8}{_f(tar.get('0.01'), '{:.4f}'):>10}"
                f"{_f(tar.get('0.001'), '{:.4f}'):>9}{coarse}"
            )
    lines.append("  * fewer than 1,000 impostor pairs: TAR@1e-3 is coarse")
    if sec.get("ratios_note"):
        lines.append("  " + sec["ratios_note"])
    for system, r in sec["ratios"].items():
        a = r["accuracy"]["all"]
        sp = r["speed"]
        lines.append(
            f"  {system} / face_recognition: EER x{_f(a['eer'], '{:.2f}')}, "
            f"TAR@1e-3 x{_f(a['tar_at_far'].get('0.001'), '{:.2f}')}, "
            f"time per photo x{_f(sp['all_photos'].get('ratio'), '{:.3f}')} all photos, "
            f"x{_f(sp['both_embedded'].get('ratio'), '{:.3f}')} where both embedded "
            f"({_f(sp['both_embedded'].get('speedup'), '{:.0f}')} times faster)"
        )


def _matcher(sec: dict, lines: list[str]) -> None:
    lines.append(
        f"  1 BLAS thread, pinned {sec.get('pinned')}, k={sec['k']}, "
        f"{sec['queries']} queries; median / p90 ms"
    )
    for n, row in sec["sizes"].items():
        parts = []
        for dtype in ("float32", "int8"):
            if dtype in row:
                d = row[dtype]
                parts.append(
                    f"{dtype} search {_ms(d['search_ms'])} verify {_ms(d['verify_ms'])} "
                    f"({d['matrix_mb']} MB, top-1 {d['top1_recall']:.2f})"
                )
        parts.append(f"numpy floor {_ms(row['numpy_floor_ms'])}")
        lines.append(f"  {int(n):>7,}: " + "; ".join(parts))
    hz = sec.get("hazard")
    if hz:
        lines.append(
            f"  BLAS hazard ({hz['what']}): all cores {_ms(hz['all_cores_ms'])}, "
            f"pinned to one core {_ms(hz['pinned_one_core_ms'])}"
        )
    for k in ("int8_note", "note"):
        if sec.get(k):
            lines.append("  " + sec[k])


def _ledger(sec: dict, lines: list[str]) -> None:
    for kind in ("refusal", "payout"):
        r = sec[kind]
        lines.append(
            f"  {kind:<8} {r['events_per_s']:>8.1f} events/s, commit ms {_ms(r['commit_ms'])}"
        )
    lines.append(
        f"  outbox mark_sent {_f(sec['mark_sent_per_s'], '{:.0f}')}/s; "
        f"{sec['db_bytes_per_event']} bytes per event on disk"
    )


def _daemon(sec: dict, lines: list[str]) -> None:
    lines.append(
        f"  READY after {sec['ready_s']:.2f} s ({_f(sec['cpu_s_to_ready'])} s CPU); RSS "
        f"{sec['rss_mb']} MB after {sec['steady_after_s']:.0f} s of frames "
        f"(anon {sec['rss_anon_mb']}, file {sec['rss_file_mb']}, peak {sec['peak_rss_mb']}); "
        f"CPU share {_f(sec['cpu_share_steady'])}; stop {_f(sec['stop_s'])} s"
    )
    q = sec.get("qr_mode")
    if q:
        lines.append(
            f"  qr mode (idle frames look for a QR): READY {q['ready_s']:.2f} s, RSS {q['rss_mb']} MB, "
            f"CPU share {_f(q['cpu_share_steady'])}"
        )
    imp = sec.get("imports_ms", {})
    if "total_ms" in imp:
        heavy = ", ".join(f"{k} {v:.0f}" for k, v in imp.items() if k != "total_ms")
        lines.append(f"  import edge.app: {imp['total_ms']:.0f} ms; heaviest by own time: {heavy}")
    mm = sec.get("rss_by_mapping_mb", {})
    if mm:
        lines.append("  RSS by mapping, MB: " + ", ".join(f"{k} {v}" for k, v in mm.items()))
    steps = sec.get("startup_steps_ms", {})
    if steps:
        lines.append("  start-up steps, ms: " + "; ".join(f"{k} {v}" for k, v in steps.items()))


def _generic(sec: dict, lines: list[str]) -> None:
    for k, v in sec.items():
        if k not in ("status", "seconds", "load_avg_after"):
            lines.append(f"  {k}: {v}")


def _models(sec: dict, lines: list[str]) -> None:
    lines.append(f"  invoke only, {sec['repeat']} runs; median / p90 ms")
    for name, row in sec["models"].items():
        spec = row["spec"]
        cells = "  ".join(f"{k} {_ms(v)}" for k, v in row.items() if k != "spec")
        lines.append(f"  {name:<18}{cells}  ({spec['dtype']} {spec['input']}, {spec['bytes']:,} B)")


def _qr(sec: dict, lines: list[str]) -> None:
    lines.append(
        f"  {sec['frame']}: no code {_ms(sec['no_code_ms'])} ms, with a claim QR "
        f"{_ms(sec['with_code_ms'])} ms (decoded: {sec['decoded']})"
    )
    a = sec.get("aruco")
    if a:
        lines.append(
            f"  cv2.QRCodeDetectorAruco: no code {_ms(a['no_code_ms'])} ms, with the QR "
            f"{_ms(a['with_code_ms'])} ms (decoded: {a['decoded']})"
        )


PRINTERS = {
    "qr": _qr,
    "models": _models,
    "pipeline": _pipeline,
    "facerec": _facerec,
    "compare": _compare,
    "matcher": _matcher,
    "ledger": _ledger,
    "daemon": _daemon,
}


def render(result: dict) -> str:
    """The whole report as text."""
    m = result["machine"]
    lines = [
        f"bench ({result['mode']}) {result['started']} on {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, {m['tflite_runtime']}; load {m['load_avg_at_start']}",
        f"photos: {result['photos'].get('count', 0)} from {result['faces_dir']}",
    ]
    for name, sec in result["sections"].items():
        lines.append("")
        load = sec.get("load_avg_after")
        lines.append(
            f"== {name} [{sec['status']}, {sec.get('seconds', 0)} s"
            + (f", load {load[0]:.1f}]" if load else "]")
        )
        if sec["status"] != "ok":
            lines.append(f"  {sec.get('reason', '')}")
            continue
        try:
            PRINTERS.get(name, _generic)(sec, lines)
        except (KeyError, TypeError) as exc:  # a section's shape changed: still show its data
            lines.append(f"  (report layout failed: {exc!r})")
            _generic(sec, lines)
    lines.append("")
    lines.append("== budgets (issue 7, one x86 core; a Pi 4 core is several times slower)")
    for b in result["budgets"]:
        v = "-" if b["value"] is None else f"{b['value']:.2f}"
        lines.append(
            f"  {b['verdict']:<13}{b['budget']:<30}{v:>9} {b['unit']:<3}(< {b['limit']:g})  {b['how']}"
        )
    return "\n".join(lines)
