"""The central dashboard at national scale: query latency over PostgreSQL, and ingest rate.

Fills a throw-away PostgreSQL (tests/pg.py) with ``--households`` entitled households of one
round (default 10 million, in 514 regencies of 38 provinces, 500 per terminal, two terminals
per distribution point) and ``--events`` events (default 3 per household: 90 % of households
collected, the rest refusals), generated in SQL with ``generate_series``. The bulk load runs
with central's trigger off and then builds the counters in SQL, in bulk, the same numbers the
trigger keeps one event at a time (the run checks that on the terminals it ingests).

Then it times what the dashboard runs per request (median and p95 of ``--repeat`` runs): the
national, province, regency, point and terminal views, the timelines, refusals, alerts,
terminal health, the home-visit list of a regency, and the rendered national page through the
ASGI app. Last, the ingest rate: ``--ingest`` signed events from real ledgers through the
reference consumer (schema, hash and signature checks, insert, central's trigger), with and
without the trigger.

    python bench/central_bench.py --households 100000        # quick: about a minute
    python bench/central_bench.py                            # national scale: 10 M / 30 M

Generated events carry short hashes and an empty body: nothing the dashboard reads per
request looks at them, and they would only make the load slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg import PgCluster, pg_bin  # type: ignore[import-not-found]  # noqa: E402

from edge.central import queries as q  # noqa: E402
from edge.central.auth import User  # noqa: E402
from edge.central.manifest import register_manifest  # noqa: E402
from edge.central.rebuild import rebuild_counters  # noqa: E402
from edge.central.store import CentralStore  # noqa: E402

ROUND = "2026-12"
PER_TERMINAL = 500
REGENCIES = 514
PROVINCES = 38
OUTCOMES = ("no_face", "no_match", "poor_quality", "spoof", "already_paid", "bad_qr", "no_match")

# One terminal: t in 0..T-1; its regency r = t % 514, province p = r % 38 (code 11 + p), regency
# code province * 100 + r / 38 + 1, point t / 2. Household k of terminal t is h = t + k*T.
_PLACE = """
    (11 + ({t} % {R}) % {P})::text AS province,
    ((11 + ({t} % {R}) % {P}) * 100 + ({t} % {R}) / {P} + 1)::text AS regency,
    'Titik ' || ({t} / 2) AS point,
    'edge-' || lpad(({t})::text, 6, '0') AS device_id"""

LOAD = [
    # Entitlements: the first 90 % of each terminal's households collected.
    """INSERT INTO c_entitlements (round_id, household_id, household_ref, province, regency,
        point, device_id, amount, masked_name, bundle_id, collected_event, collected_at,
        collected_device)
    SELECT '{round}', 'KPM-' || lpad(h::text, 9, '0'), NULL, pl.province, pl.regency, pl.point,
        pl.device_id, 300000, NULL, 'bench',
        CASE WHEN h / {T} < {paid_per} THEN md5('e' || ((h / {T}) * {T} + h % {T} + 1))::uuid::text END,
        NULL, CASE WHEN h / {T} < {paid_per} THEN pl.device_id END
    FROM generate_series(0, {H} - 1) AS h, LATERAL (SELECT {place_h}) pl""",
    # Events: event i (1-based) is seq i / T + 1 of terminal (i - 1) % T; the first
    # ``paid_per`` of each terminal pay its households in order, the rest are refusals.
    """INSERT INTO events (event_id, device_id, regency, seq, ts, outcome, household_id,
        round_id, amount, prev_hash, hash, body, received_at)
    SELECT md5('e' || i)::uuid::text, pl.device_id, pl.regency, s, to_char(
            timestamp '2026-12-01' + s * interval '13 minutes', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        CASE WHEN s <= {paid_per} THEN 'accepted' ELSE ('{{{outcomes}}}'::text[])[1 + i % 7] END,
        CASE WHEN s <= {paid_per} THEN 'KPM-' || lpad(((s - 1) * {T} + t)::text, 9, '0') END,
        '{round}', CASE WHEN s <= {paid_per} THEN 300000 END,
        md5('p' || i), md5('h' || i), '{{}}', extract(epoch FROM now())
    FROM generate_series(1, {E}) AS i,
        LATERAL (SELECT (i - 1) % {T} AS t, (i - 1) / {T} + 1 AS s) ts_,
        LATERAL (SELECT {place_t}) pl""",
]

KEYS = [
    "ALTER TABLE c_entitlements ADD PRIMARY KEY (round_id, household_id)",
    "CREATE UNIQUE INDEX c_ent_ref ON c_entitlements (round_id, household_ref)",
    "CREATE INDEX c_ent_point ON c_entitlements (round_id, regency, point)",
    "CREATE INDEX c_ent_device ON c_entitlements (round_id, device_id)",
    "ALTER TABLE events ADD PRIMARY KEY (event_id)",
    "CREATE INDEX events_device_seq ON events (device_id, seq)",
    "CREATE INDEX events_claim ON events (household_id, round_id)",
]
DROP_KEYS = [
    "ALTER TABLE c_entitlements DROP CONSTRAINT c_entitlements_pkey",
    "DROP INDEX c_ent_ref",
    "DROP INDEX c_ent_point",
    "DROP INDEX c_ent_device",
    "ALTER TABLE events DROP CONSTRAINT events_pkey",
    "DROP INDEX events_device_seq",
    "DROP INDEX events_claim",
]

# A few thousand double payouts and chain alerts for the alerts page.
ANOMALIES = """INSERT INTO anomalies SELECT CASE WHEN i % 2 = 0 THEN 'double_payout'
    ELSE 'chain_break' END, md5('e' || (i * 997))::uuid::text,
    'edge-' || lpad(((i * 997 - 1) % {T})::text, 6, '0'), 'generated',
    extract(epoch FROM now()) - i FROM generate_series(1, 2000) AS i"""


def _sql(conn, sql: str, **kw) -> float:
    t0 = time.perf_counter()
    conn.execute(sql.format(**kw) if kw else sql)
    return time.perf_counter() - t0


def load(dsn: str, households: int, events: int, log=print) -> dict:
    """Create central's schema and fill it; returns seconds per phase."""
    import psycopg

    CentralStore(dsn).close()  # tables, indexes, the trigger
    terminals = max(1, households // PER_TERMINAL)
    per_terminal = events // terminals
    kw = {
        "H": households,
        "E": terminals * per_terminal,
        "T": terminals,
        "R": REGENCIES,
        "P": PROVINCES,
        "round": ROUND,
        "paid_per": int(0.9 * households / terminals),
        "outcomes": ",".join(OUTCOMES),
    }
    kw["place_h"] = _PLACE.format(t=f"h % {terminals}", R=REGENCIES, P=PROVINCES)
    kw["place_t"] = _PLACE.format(t="t", R=REGENCIES, P=PROVINCES)
    phases = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting in ("maintenance_work_mem = '1GB'", "work_mem = '256MB'"):
            conn.execute(f"SET {setting}")
        conn.execute("ALTER TABLE events DISABLE TRIGGER c_on_event")
        for sql in DROP_KEYS:
            conn.execute(sql)
        for name, sql in zip(("entitlements", "events"), LOAD, strict=True):
            log(f"loading {name} ...")
            phases[f"load {name}"] = _sql(conn, sql, **kw)
        log("building keys and indexes ...")
        phases["keys and indexes"] = sum(_sql(conn, sql) for sql in KEYS)
        phases["anomalies"] = _sql(conn, ANOMALIES, **kw)
        conn.execute("ALTER TABLE events ENABLE TRIGGER c_on_event")
        conn.execute("ANALYZE")
    # The counters in bulk, by the code `edge central rebuild` runs: the numbers the trigger
    # would have kept (the entitlements' links were generated with them).
    log("counters in bulk ...")
    store = CentralStore(dsn)
    t0 = time.perf_counter()
    store.write(lambda sql: (sql("SET work_mem = '256MB'", ()), rebuild_counters(sql, False)))
    phases["counters"] = time.perf_counter() - t0
    store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        phases["analyze"] = _sql(conn, "VACUUM ANALYZE")
        sizes = conn.execute(
            "SELECT pg_size_pretty(pg_database_size(current_database())), "
            "(SELECT count(*) FROM events), (SELECT count(*) FROM c_entitlements)"
        ).fetchone()
    phases["database"] = sizes[0]
    phases["events"], phases["households"], phases["terminals"] = sizes[1], sizes[2], terminals
    return phases


def _time(fn, repeat: int) -> dict:
    fn()  # a warm cache, as on a dashboard in use
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 2),
    }


def latencies(dsn: str, repeat: int) -> dict:
    """Per-request latency of each dashboard query and of the rendered national page."""
    store = CentralStore(dsn)
    nat = User("bench", "national")
    [(regency, point, device_id)] = store.rows(
        "SELECT regency, point, device_id FROM c_cells WHERE round_id = ? "
        "ORDER BY device_id LIMIT 1",
        (ROUND,),
    )
    province = regency[:2]
    reg_user = User("bench-reg", "regency", regency)
    f_nat = q.Filters(ROUND)
    f_prov = q.Filters(ROUND, province)
    f_reg = q.Filters(ROUND, province, regency)
    f_point = q.Filters(ROUND, province, regency, point)
    f_dev = q.Filters(ROUND, device_id=device_id)
    cases = {
        "progress: national (by province)": lambda: q.progress(store, nat, f_nat),
        "progress: province (by regency)": lambda: q.progress(store, nat, f_prov),
        "progress: regency (by point)": lambda: q.progress(store, reg_user, f_reg),
        "progress: point (by terminal)": lambda: q.progress(store, reg_user, f_point),
        "timeline: national": lambda: q.timeline(store, nat, f_nat),
        "timeline: regency": lambda: q.timeline(store, reg_user, f_reg),
        "timeline: terminal": lambda: q.timeline(store, reg_user, f_dev),
        "refusals: national": lambda: q.refusals(store, nat, f_nat),
        "refusals: regency": lambda: q.refusals(store, reg_user, f_reg),
        "alerts: national": lambda: q.anomalies(store, nat),
        "page cards (counts): national": lambda: q.summary_counts(store, nat, f_nat),
        "page cards (counts): regency": lambda: q.summary_counts(store, reg_user, f_reg),
        "terminal health: regency": lambda: q.terminals(store, reg_user, f_reg),
        "terminal health: national": lambda: q.terminals(store, nat, f_nat),
        "rounds menu: national": lambda: q.rounds(store, nat),
        "terminal events (drill-down)": lambda: q.device_events(store, reg_user, device_id),
        "home-visit list: regency": lambda: q.home_visits(store, reg_user, f_reg),
        "live feed change token": store.change_token,
    }
    out = {name: _time(fn, repeat) for name, fn in cases.items()}
    out.update(_pages(store, repeat, regency))
    store.close()
    return out


def _pages(store: CentralStore, repeat: int, regency: str) -> dict:
    from starlette.testclient import TestClient

    from edge.central.auth import add_user
    from edge.central.web import create_app

    add_user(store, "bench", "bench-password", "national")
    client = TestClient(create_app(store, "bench"))
    client.post("/login", data={"username": "bench", "password": "bench-password"})

    def get(url):
        return lambda: client.get(url).raise_for_status()

    return {
        "page /: national (rendered)": _time(get(f"/?round={ROUND}"), repeat),
        "page /: regency (rendered)": _time(get(f"/?round={ROUND}&regency={regency}"), repeat),
    }


def ingest(dsn: str, root: Path, n: int, devices: int = 10) -> dict:
    """Signed events through the reference consumer, central's trigger on and then off."""
    import psycopg

    from edge.events import canonical
    from edge.keys import DeviceIdentity
    from edge.ledger.store import Ledger
    from edge.mqtt.client import BrokerSettings
    from edge.mqtt.consumer import Consumer, DeviceRegistry

    store = CentralStore(dsn)
    registry = DeviceRegistry()
    consumer = Consumer(BrokerSettings(tls=False), store, registry)
    result = {}
    for phase in ("trigger on", "trigger off"):
        batches = []
        for d in range(devices):
            device_id = f"edge-ingest-{phase[8:]}-{d:02d}"
            identity = DeviceIdentity.generate()
            registry.add(device_id, identity.device_public_pem())
            count = n // devices
            ids = [f"KPM-{device_id}-{k:05d}" for k in range(count)]
            register_manifest(store, _manifest(device_id, ids))
            ledger = Ledger(root / f"{device_id}.sqlite", identity, device_id, "3171")
            ledger._conn.execute("PRAGMA synchronous=OFF")  # bench set-up only
            for k, hh in enumerate(ids):
                if k % 2 == 0:
                    ledger.record("accepted", household_id=hh, round_id=ROUND, amount=300000)
                else:
                    ledger.record("no_match", household_id=hh, round_id=ROUND, score=0.2)
            batches += [(device_id, canonical(ev)) for ev in ledger.events()]
            ledger.close()
        if phase == "trigger off":
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ALTER TABLE events DISABLE TRIGGER c_on_event")
        t0 = time.perf_counter()
        for device_id, payload in batches:
            assert consumer.handle(f"bansos/v1/3171/{device_id}/event", payload) == "stored"
        seconds = time.perf_counter() - t0
        result[f"events/s, {phase}"] = round(len(batches) / seconds, 1)
        if phase == "trigger off":
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ALTER TABLE events ENABLE TRIGGER c_on_event")
        else:
            result["counters exact after ingest"] = _exact(store, "edge-ingest-on-%")
    store.close()
    return result


def _manifest(device_id: str, ids: list[str]) -> dict:
    return {
        "round_id": ROUND,
        "device_id": device_id,
        "regency": "3171",
        "point_name": f"Titik {device_id}",
        "households": [{"household_id": h, "amount": 300000} for h in ids],
    }


def _exact(store: CentralStore, pattern: str) -> bool:
    """The ingested terminals' counters equal a recount from their events and entitlements."""
    kept = store.rows(
        "SELECT device_id, entitled, collected, paid FROM c_cells WHERE device_id LIKE ? "
        "ORDER BY device_id",
        (pattern,),
    )
    counted = store.rows(
        "SELECT e.device_id, count(*), count(e.collected_event), (SELECT count(*) FROM events v "
        "WHERE v.device_id = e.device_id AND v.outcome = 'accepted') FROM c_entitlements e "
        "WHERE e.device_id LIKE ? GROUP BY e.device_id ORDER BY e.device_id",
        (pattern,),
    )
    return [tuple(r) for r in kept] == [tuple(r) for r in counted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--households", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, help="default: 3 per household")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per query")
    parser.add_argument("--ingest", type=int, default=2000, help="events for the ingest rate")
    parser.add_argument("--dsn", help="an existing, empty PostgreSQL database (default: own)")
    parser.add_argument("--dir", type=Path, help="where the throw-away cluster lives")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    events = args.events or 3 * args.households
    cluster = None
    dsn = args.dsn
    with tempfile.TemporaryDirectory(prefix="central-bench-", dir=args.dir) as tmp:
        try:
            if dsn is None:
                bindir = pg_bin()
                if bindir is None:
                    print("PostgreSQL server binaries not found (apt-get install postgresql)")
                    return 2
                cluster = PgCluster(bindir)
                cluster.start()
                dsn = cluster.new_database()
            t0 = time.perf_counter()
            results: dict = {"scale": {"households": args.households, "events": events}}
            results["load"] = load(dsn, args.households, events)
            results["load"]["total_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(results["load"], indent=1, default=str))
            results["latency"] = latencies(dsn, args.repeat)
            for name, r in results["latency"].items():
                print(f"{name:<36} median {r['median_ms']:>8.2f} ms   p95 {r['p95_ms']:>8.2f} ms")
            results["ingest"] = ingest(dsn, Path(tmp), args.ingest)
            print(json.dumps(results["ingest"], indent=1))
        finally:
            if cluster is not None:
                cluster.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
