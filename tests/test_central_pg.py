"""Central's store on a real PostgreSQL (tests/pg.py): the PL/pgSQL trigger, concurrent
consumers, and the same behaviour test_central.py checks on SQLite."""

from __future__ import annotations

import threading

import pytest
from central_world import AMOUNT, ROUND, TERMINALS, World, household
from pg import pg_cluster_fixture, pg_dsn_fixture  # noqa: F401

# The SQLite tests, run again here against this module's PostgreSQL ``world``.
from test_central import (  # noqa: F401
    NATIONAL,
    cells,
    recount,
    test_a_manifest_registered_after_the_payouts_links_them,
    test_a_rebuild_from_scratch_gives_what_the_trigger_kept,
    test_a_regency_user_sees_only_their_regency,
    test_an_override_pays_collects_and_is_listed,
    test_double_payout_and_refusals_are_counted_but_collect_once,
    test_health_and_status_reports_feed_the_terminal_page,
    test_household_ref_matches_the_pseudonym_the_terminal_sends,
    test_progress_at_every_level_follows_each_payout,
    test_the_change_token_moves_with_events_and_health,
)

from edge.central import queries as q
from edge.central.store import CentralStore
from edge.mqtt.store import EventStore


@pytest.fixture
def world(tmp_path, pg_dsn):
    w = World(CentralStore(pg_dsn), tmp_path)
    assert w.store.is_postgres
    yield w
    w.close()


def test_concurrent_consumers_keep_exact_counters(world, pg_dsn):
    """Four consumers (two of them plain EventStores: the trigger lives in the database) store
    the events of every terminal at once; the counters equal a recount from scratch."""
    world.all_terminals()
    events = []
    for device_id, (_, _, count) in TERMINALS.items():
        for n in range(1, count + 1):
            events.append(world.pay(device_id, n, feed=False))
        events.append(world.ledgers[device_id].record("no_match", score=0.1))
    # The same household at two terminals, delivered by different consumers at once.
    events.append(world.pay("edge-a02", 0, feed=False, hh=household("edge-a01", 1)))
    stores = [CentralStore(pg_dsn), CentralStore(pg_dsn), EventStore(pg_dsn), EventStore(pg_dsn)]
    errors = []

    def consume(store, share):
        try:
            for ev in share:
                store.add(ev)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # Every event twice (a re-delivery), spread over the consumers.
    shares = [events[i::4] + events[(i + 1) % 4 :: 4] for i in range(4)]
    threads = [threading.Thread(target=consume, args=a) for a in zip(stores, shares, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert errors == []
    assert world.store.count() == len(events)
    assert cells(world.store) == recount(world.store)
    total = q.progress(world.store, NATIONAL, q.Filters(ROUND))["total"]
    entitled = sum(c for _, _, c in TERMINALS.values())
    assert (total["entitled"], total["collected"], total["paid"]) == (
        entitled,
        entitled,
        entitled + 1,
    )
    assert total["amount"] == (entitled + 1) * AMOUNT
    [alert] = q.anomalies(world.store, NATIONAL)
    assert alert["kind"] == "double_payout"
    assert q.refusals(world.store, NATIONAL, q.Filters())["refused"] == {"no_match": len(TERMINALS)}
