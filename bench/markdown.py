"""Markdown tables of a bench result, for docs/performance.md.

``python -m bench.markdown bench/out/latest-full.json`` prints the tables; the prose around
them in the doc is written by hand from the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _n(v, fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _mp(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "–"
    return f"{s['median']:.2f} / {s['p90']:.2f}"


def pipeline(sec: dict) -> list[str]:
    """Per-stage table: one row per embedder and thread setting."""
    stages = ("decode", "detect", "align", "quality", "embed", "match", "liveness")
    head = ["variant", *stages, "face (budget)", "face min", "end to end", "capture frame"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, v in sec["variants"].items():
        st = v["stages_ms"]
        cells = [_mp(st.get(s)) for s in stages]
        cells += [
            _mp(v["analyse_ms_embedded"]),
            _n(v["analyse_ms_embedded"].get("min")),
            _mp(v["end_to_end_ms"]),
            _mp(v.get("capture_frame_ms")),
        ]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return rows


def models(sec: dict) -> list[str]:
    """Invoke-only table."""
    rows = ["| model | input | 1 thread | all cores | 1 thread min |", "|---|---|---|---|---|"]
    for name, row in sec["models"].items():
        spec = row["spec"]
        other = next((v for k, v in row.items() if k not in ("spec", "1t")), None)
        rows.append(
            f"| {name} | {spec['dtype']} {'x'.join(map(str, spec['input']))} | "
            f"{_mp(row.get('1t'))} | {_mp(other)} | {_n((row.get('1t') or {}).get('min'))} |"
        )
    return rows


def accuracy(sec: dict, detailed=("facerec", "ours:int8")) -> list[str]:
    """EER and TAR: per source for ``detailed`` systems, over all pairs for every system."""
    rows = [
        "| system | source | genuine | impostor | no face | EER | TAR@FAR 1e-2 | TAR@FAR 1e-3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, per in sec["accuracy"].items():
        for src, r in per.items():
            if src != "all" and system not in detailed:
                continue
            tar = r.get("tar_at_far", {})
            rows.append(
                f"| {system} | {src} | {r['genuine']} | {r['impostor']} | {r['no_face']} | "
                f"{_n(r['eer'], '{:.2%}')} | {_n(tar.get('0.01'), '{:.2%}')} | "
                f"{_n(tar.get('0.001'), '{:.2%}')} |"
            )
    return rows


def ratios(sec: dict) -> list[str]:
    """Ours / face_recognition, over all pairs and photos."""
    rows = [
        "| ours | EER ratio | TAR@1e-3 ratio | ms per photo, ours | theirs | ratio | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for system, r in sec.get("ratios", {}).items():
        a, sp = r["accuracy"]["all"], r["speed"]["both_embedded"]
        rows.append(
            f"| {system} | {_n(a['eer'], '{:.2f}')} | {_n(a['tar_at_far'].get('0.001'), '{:.2f}')} | "
            f"{_n(sp.get('ours_ms'), '{:.1f}')} | {_n(sp.get('theirs_ms'), '{:.1f}')} | "
            f"{_n(sp.get('ratio'), '{:.3f}')} | {_n(sp.get('speedup'), '{:.0f}')}x |"
        )
    return rows


def matcher(sec: dict) -> list[str]:
    """1:N search table."""
    rows = [
        "| templates | float32 search | int8 search | float32 verify | numpy floor | MB f32 / int8 |",
        "|---|---|---|---|---|---|",
    ]
    for n, row in sec["sizes"].items():
        f, i = row.get("float32", {}), row.get("int8", {})
        rows.append(
            f"| {int(n):,} | {_mp(f.get('search_ms'))} | {_mp(i.get('search_ms'))} | "
            f"{_mp(f.get('verify_ms'))} | {_mp(row.get('numpy_floor_ms'))} | "
            f"{f.get('matrix_mb', '–')} / {i.get('matrix_mb', '–')} |"
        )
    return rows


def daemon(sec: dict) -> list[str]:
    """READY, RSS and CPU of `edge run` per flow mode."""
    rows = [
        "| flow mode | start to READY | RSS steady | anon / file | CPU share steady | stop |",
        "|---|---|---|---|---|---|",
        f"| {sec.get('flow_mode', 'identify')} | {sec['ready_s']:.2f} s | {sec['rss_mb']} MB | "
        f"{sec['rss_anon_mb']} / {sec['rss_file_mb']} MB | {_n(sec['cpu_share_steady'])} | "
        f"{_n(sec['stop_s'])} s |",
    ]
    q = sec.get("qr_mode")
    if q:
        rows.append(
            f"| qr | {q['ready_s']:.2f} s | {q['rss_mb']} MB | | {_n(q['cpu_share_steady'])} | "
            f"{_n(q['stop_s'])} s |"
        )
    steps = sec.get("startup_steps_ms")
    if steps:
        rows.append("")
        rows.append(
            "Start-up steps in a fresh process (ms): "
            + "; ".join(f"{k} {v}" for k, v in steps.items())
        )
    return rows


def throughput(sections: dict) -> list[str]:
    """Ledger and MQTT events per second."""
    rows = ["| path | events/s | per event (median / p90 ms) |", "|---|---|---|"]
    led = sections.get("ledger", {})
    for kind in ("refusal", "payout"):
        if kind in led:
            r = led[kind]
            rows.append(
                f"| ledger {kind} (one durable commit) | {r['events_per_s']:.0f} | {_mp(r['commit_ms'])} |"
            )
    mq = sections.get("mqtt", {})
    if mq.get("status") == "ok" and "events_per_s" in mq:
        rows.append(
            f"| MQTT QoS 1, mutual TLS ({mq.get('events')} events) | {mq['events_per_s']:.0f} | |"
        )
    out = sections.get("outage", {})
    if out.get("status") == "ok":
        for how in ("outbox", "recovery"):
            rows.append(
                f"| catch-up after a day offline, {how} ({out['events']} events) "
                f"| {out[how]['events_per_s']:.0f} | |"
            )
    return rows


def qr(sec: dict) -> list[str]:
    """Idle-frame QR detection."""
    rows = [
        "| detector (640x480 grey) | no code | with a claim QR | decoded |",
        "|---|---|---|---|",
        f"| cv2.QRCodeDetector (edge.payout.flow) | {_mp(sec['no_code_ms'])} | {_mp(sec['with_code_ms'])} | {sec['decoded']} |",
    ]
    a = sec.get("aruco")
    if a:
        rows.append(
            f"| cv2.QRCodeDetectorAruco | {_mp(a['no_code_ms'])} | {_mp(a['with_code_ms'])} | {a['decoded']} |"
        )
    return rows


def budgets(result: dict) -> list[str]:
    """Budget verdicts."""
    rows = ["| budget (one x86 core) | limit | measured | verdict |", "|---|---|---|---|"]
    for b in result["budgets"]:
        rows.append(
            f"| {b['budget']} | < {b['limit']:g} {b['unit']} | "
            f"{_n(b['value'])} {b['unit']} | {b['verdict']} |"
        )
    return rows


def render(result: dict) -> str:
    """Every table whose section ran."""
    s = result["sections"]
    parts = [("Budgets", budgets(result))]
    for title, name, fn in (
        ("Per-stage milliseconds (median / p90)", "pipeline", pipeline),
        ("Interpreter invoke only (median / p90 ms)", "models", models),
        ("Accuracy on the same pairs", "compare", accuracy),
        ("Ours / face_recognition", "compare", ratios),
        ("1:N search, one core (median / p90 ms)", "matcher", matcher),
        ("Idle frame of the qr flow (median / p90 ms)", "qr", qr),
        ("The daemon", "daemon", daemon),
    ):
        if s.get(name, {}).get("status") == "ok":
            parts.append((title, fn(s[name])))
    if s.get("ledger", {}).get("status") == "ok":
        parts.append(("Ledger and MQTT", throughput(s)))
    return "\n\n".join(f"### {t}\n\n" + "\n".join(rows) for t, rows in parts)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/latest-full.json")
    print(render(json.loads(path.read_text())))
