"""The command store on both backends (SQLite file, throwaway PostgreSQL): migrations, idempotent writes by
natural key, the leader lease with fencing, and the reads consoles and the web use."""

import pytest

from gasguard.command.store import MIGRATIONS, LeaseLost, open_store


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    s.migrate()
    yield s
    s.close()


def _inc(iid="lixia-leak-00000001-100", rev=1, status="open", level=4):
    state = {"id": iid, "kind": "leak", "status": status, "level": level, "warning": "blue", "detected_at": 100.0}
    latest = {"incident_id": iid, "revision": rev, "status": status, "level": level, "warning": "blue",
              "published_at": 100.0 + rev, "acked": None, "detected_at": 100.0}
    return state, latest


def test_migrations_are_versioned_and_idempotent(store_url):
    with open_store(store_url) as s:
        assert s.schema_version() == 0
        assert s.migrate() == [v for v, _, _ in MIGRATIONS]
        assert s.schema_version() == MIGRATIONS[-1][0]
    with open_store(store_url) as s:          # a second start finds nothing to do
        assert s.migrate() == []


def test_frame_identity_is_graded_once_and_revisions_are_never_duplicated(store):
    fence = store.acquire_lease("a", ttl=30)
    with store.write(fence) as tx:
        assert tx.first_frame((0xB1, 1, 7), "gw1", 10.0)
        assert not tx.first_frame((0xB1, 1, 7), "gw2", 10.5)       # the other gateway's copy
        assert tx.first_frame((0xB1, 1, 8), "gw2", 10.5)
        state, latest = _inc()
        tx.save_incident(state, latest, 1)
        assert tx.add_revision(state["id"], 1, "new", 101.0, latest)
        assert not tx.add_revision(state["id"], 1, "new", 101.0, latest)
    assert [c["revision"] for c in store.changes(0)] == [1]
    assert store.list_incidents()[0]["incident_id"] == "lixia-leak-00000001-100"
    with store.write(fence) as tx:                  # a batch's identities looked up at once, then asked one by one
        tx.known_frames([(0xB1, 1, 7), (0xB1, 1, 9), (0xB1, 1, 9)])
        assert not tx.first_frame((0xB1, 1, 7), "gw1", 11.0)       # stored by the transaction before
        assert tx.first_frame((0xB1, 1, 9), "gw1", 11.0)
        assert not tx.first_frame((0xB1, 1, 9), "gw2", 11.2)       # the other gateway's copy, same batch
        assert not tx.first_frame((0xB1, 1, 8), "gw1", 11.0)       # not looked up before: asked on its own
        assert tx.add_revisions([(state["id"], 1, "new", 101.0, latest), (state["id"], 2, "update", 102.0, latest)]) \
            == [False, True]
    assert [c["revision"] for c in store.changes(0)] == [1, 2]


def test_a_failed_transaction_leaves_nothing(store):
    fence = store.acquire_lease("a", ttl=30)
    with pytest.raises(RuntimeError):
        with store.write(fence) as tx:
            tx.first_frame((1, 1, 1), "gw1", 1.0)
            state, latest = _inc()
            tx.save_incident(state, latest, 0)
            raise RuntimeError("crash between two writes")
    assert store.list_incidents() == []
    with store.write(fence) as tx:
        assert tx.first_frame((1, 1, 1), "gw1", 1.0)               # not marked as graded either


def test_a_batch_lookup_of_frame_identities_searches_the_primary_key(tmp_path):
    """The frames table holds a week of identities (frames_keep_s): a batch's lookup must search its primary
    key once an identity, never scan the table (SQLite scans it for `(dev, dir, fcnt) IN (VALUES ...)`).
    SQLite's plan is fixed by its rules; PostgreSQL's depends on the table's statistics (on a million frames it
    is a nested loop of primary-key index scans for this query)."""
    from gasguard.command.store import _frames_lookup
    with open_store(tmp_path / "command.db") as s:
        s.migrate()
        plan = [r[3] for r in s.db.conn.execute("EXPLAIN QUERY PLAN " + _frames_lookup(4), [1, 1, 1] * 4)]
    assert any(p.startswith("SEARCH f ") and "(dev=? AND dir=? AND fcnt=?)" in p for p in plan), plan
    assert not any(p.startswith("SCAN f") for p in plan), plan


def test_a_statement_that_fails_in_the_database_leaves_nothing_and_the_store_carries_on(store):
    """On PostgreSQL the transaction is pipelined: the failing INSERT's error comes back later (at the next
    wait, the lease check or the commit), and by then later statements were sent too. None of them is kept."""
    fence = store.acquire_lease("a", ttl=30)
    with pytest.raises(Exception, match="(?i)not.null"):
        with store.write(fence) as tx:
            tx.first_frame((1, 1, 1), "gw1", 1.0)
            tx.journal(1.0, None, "a journal row without its category")      # NOT NULL: refused by the database
            state, latest = _inc()
            tx.save_incident(state, latest, 0)
    assert store.list_incidents() == [] and store.journal() == []
    with store.write(fence) as tx:
        assert tx.first_frame((1, 1, 1), "gw1", 1.0)               # not marked as graded either
        tx.journal(2.0, "revision", "carried on")
    assert [j["text"] for j in store.journal()] == ["carried on"]


def test_a_frame_stored_by_another_writer_after_the_lookup_fails_the_transaction(postgres_url):
    """Only the lease holder grades, so this cannot happen between two services using the lease; if it does
    (two leading one store under the same instance name), the frame is still never graded twice: the second
    transaction fails whole and its batch comes again."""
    import psycopg
    a, b = open_store(postgres_url), open_store(postgres_url)
    a.migrate()
    fence = a.acquire_lease("a", ttl=30)
    with pytest.raises(psycopg.errors.UniqueViolation):
        with a.write(fence) as tx:
            tx.known_frames([(1, 1, 1)])
            with b.write(None) as other:
                assert other.first_frame((1, 1, 1), "gw2", 1.0)
            assert tx.first_frame((1, 1, 1), "gw1", 1.0)           # absent when this transaction looked
            tx.journal(1.0, "revision", "graded by a")
    assert a.journal() == []
    with a.write(fence) as tx:
        assert not tx.first_frame((1, 1, 1), "gw1", 2.0)           # b's, once
    a.close()
    b.close()


def test_leader_lease_fences_a_leader_that_lost_it(store):
    a = store.acquire_lease("a", ttl=5, now=1000.0)
    assert a is not None and a.epoch == 1
    assert store.acquire_lease("b", ttl=5, now=1003.0) is None       # a still holds it
    b = store.acquire_lease("b", ttl=5, now=1006.0)                   # a's lease ran out
    assert b is not None and b.epoch == 2
    with pytest.raises(LeaseLost):
        with store.write(a, now=1006.5) as tx:                        # a wakes up and tries to write
            tx.journal(1006.5, "revision", "stale leader")
    assert store.journal() == []
    assert store.lease() == {"holder": "b", "epoch": 2, "expires_at": 1011.0}      # b's, untouched
    with store.write(b, now=1007.0) as tx:
        tx.journal(1007.0, "revision", "new leader")
    assert store.lease()["expires_at"] == 1012.0                      # every write extends the lease
    store.release_lease(b)
    assert store.acquire_lease("a", ttl=5, now=1008.0).epoch == 3


def test_incident_history_acks_input_escalations_notifications(store):
    fence = store.acquire_lease("a", ttl=30)
    iid = "lixia-supply-00000002-100"
    with store.write(fence) as tx:
        for rev in (1, 2):
            state, latest = _inc(iid, rev)
            tx.save_incident(state, latest, rev)
            tx.add_revision(iid, rev, "new" if rev == 1 else "escalation", 100.0 + rev, latest)
            tx.journal(100.0 + rev, "revision", f"revision {rev}", incident_id=iid, revision=rev)
        tx.escalation(iid, 2, "phone", 1, 1300.0, 0.0)
        tx.ack(iid, 2, "王值班", 1310.0, "accepted", {"revision": 2})
        tx.operator_input(iid, "王值班", 1320.0, "accepted", {"deaths": 0})
        assert tx.notification(iid, 2, "phone", "email", "duty@example.org", 1300.0, {"x": 1})
        assert not tx.notification(iid, 2, "phone", "email", "duty@example.org", 1300.0, {"x": 1})
    due = store.due_notifications(1300.0)
    assert [(n["channel"], n["recipient"]) for n in due] == [("email", "duty@example.org")]
    with store.write(fence) as tx:
        tx.delivery(due[0]["seq"], ok=False, t=1300.0, error="421 try later", next_at=1305.0)
    assert store.due_notifications(1301.0) == []
    with store.write(fence) as tx:
        tx.delivery(due[0]["seq"], ok=True, t=1305.0, error=None, next_at=None)
    got = store.get_incident(iid)
    assert got["incident"]["revision"] == 2
    assert [r["kind"] for r in got["revisions"]] == ["new", "escalation"]
    assert got["acks"][0]["who"] == "王值班" and got["inputs"][0]["fields"] == {"deaths": 0}
    assert got["escalations"][0]["stage"] == "phone"
    assert got["notifications"][0]["status"] == "sent" and got["notifications"][0]["attempts"] == 2
    assert [j["text"] for j in got["journal"]] == ["revision 1", "revision 2"]
    assert store.counts() == {4: 1}


def test_gateways_seen_silent_and_back(store):
    fence = store.acquire_lease("a", ttl=30)
    with store.write(fence) as tx:
        tx.gateway("gw1", "lixia", 10.0, online=True, status_t=10.0, version="1.0")
        tx.gateway("gw1", "lixia", 50.0)                               # heard: last_seen moves
        tx.gateway("gw1", "lixia", 200.0, silent=True)                 # the verdict does not move it
    g = store.gateways()[0]
    assert (g["online"], g["silent"], g["last_seen"], g["version"]) == (True, True, 50.0, "1.0")
    with store.write(fence) as tx:
        tx.gateway("gw1", "lixia", 210.0, online=False, silent=False)  # its Last Will
    g = store.gateways()[0]
    assert (g["online"], g["silent"], g["last_seen"]) == (False, False, 210.0)


def test_a_store_of_an_older_schema_is_migrated_in_place_keeping_what_it_holds(store_url, monkeypatch):
    """A store written by the previous release (schema 1) gets the new tables at the next start; nothing it
    held is lost, and the new tables work."""
    from gasguard.command import store as S
    monkeypatch.setattr(S, "MIGRATIONS", MIGRATIONS[:1])
    with open_store(store_url) as old:
        old.migrate()
        fence = old.acquire_lease("a", ttl=30)
        with old.write(fence) as tx:
            state, latest = _inc()
            tx.save_incident(state, latest, 1)
            tx.add_revision(state["id"], 1, "new", 101.0, latest)
        assert old.schema_version() == 1
    monkeypatch.setattr(S, "MIGRATIONS", MIGRATIONS)
    with open_store(store_url) as new:
        assert new.migrate() == [v for v, _, _ in MIGRATIONS[1:]]
        assert [i["incident_id"] for i in new.list_incidents()] == ["lixia-leak-00000001-100"]
        fence = new.acquire_lease("a", ttl=30)
        with new.write(fence) as tx:
            seq = tx.shelf_log("lixia-leak-00000001-100", "shelve", "op", 102.0, "accepted", reason="crew on site",
                               until=1902.0)
            tx.shelve("lixia-leak-00000001-100", {"by": "op", "reason": "crew on site", "at": 102.0, "until": 1902.0,
                                                  "revision": 1, "grade": [3, 4]}, seq)
        assert new.shelves()["lixia-leak-00000001-100"]["until"] == 1902.0 and new.shelf_seq() == seq
