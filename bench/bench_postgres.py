"""Checkpoint latency of the PostgreSQL store against a bare one-statement upsert.

    python bench/bench_postgres.py [--quick] [--url postgresql://postgres@127.0.0.1:5432/postgres]

Runs against the shared server in a schema of its own, dropped at the end.
Measured side by side, alternating:

* ``PostgresStore.save`` of a realistic record (positions of three cursors, a state
  dict of ~40 values, fingerprints: ~2 KB of JSON), holding the lease: one statement
  doing the epoch compare-and-set and writing the run's history entry.
* The baseline a hand-written checkpoint would use: ``json.dumps`` of the same data
  and ``INSERT ... ON CONFLICT DO UPDATE`` of that text (same size) into a table keyed
  like ours, as ONE autocommit statement on a connection of its own.
* For information: the store without its history entry (``?history=0``), the same
  upsert with the JSON pre-encoded (the database path alone), as BEGIN / upsert /
  COMMIT (three round trips), and the record codec (``encode_record``, tagged JSON)
  against ``json.dumps`` of the same data: the part of the store's time spent before
  the statement is sent.

All connections commit with ``synchronous_commit = on`` (durable), as the store does.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

from restartable._checkpoint import Owner, encode_record
from restartable.stores import open_store

_UPSERT = (
    "INSERT INTO {s}.raw_ckpt (job, run, epoch, record, updated) VALUES (%s, %s, %s, %s, now()) "
    "ON CONFLICT (job, run) DO UPDATE SET epoch = excluded.epoch, record = excluded.record, updated = excluded.updated"
)


def _state() -> dict:
    state: dict = {f"counter_{i}": i * 1013 for i in range(20)}
    state.update({f"label_{i}": f"partition-{i:04d}/shard-{i % 7}" for i in range(10)})
    state["seen_ids"] = list(range(1000, 1040))
    state["totals"] = {"rows": 1_234_567, "bytes": 987_654_321, "ratio": 0.8125, "last": "2026-11-27T10:00:00"}
    return state


def main() -> None:
    import psycopg
    from psycopg import sql

    p = _common.parser(__doc__.splitlines()[0])
    default_url = os.environ.get("RESTARTABLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--url", default=default_url)
    args = p.parse_args()
    # One operation per sample, the cases taking turns: the shared disk's fsync time
    # swings by 2x within a second, and strict alternation lets every case see the
    # same disk. The median of many single-operation samples is then stable.
    n = 1
    repeat = args.repeat or (300 if args.quick else 2000)
    schema = f"rt_bench_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(schema)

    store = open_store(f"{args.url}?schema={schema}")
    bare = open_store(f"{args.url}?schema={schema}&history=0")  # the same without its history entry
    auto = psycopg.connect(args.url, autocommit=True)
    txn = psycopg.connect(args.url)
    try:
        for conn in (auto, txn):
            conn.execute("SET synchronous_commit TO on")
        txn.commit()
        auto.execute(
            sql.SQL(
                'CREATE TABLE {s}.raw_ckpt (job text COLLATE "C", run text COLLATE "C", epoch bigint, '
                "record text, updated timestamptz, PRIMARY KEY (job, run))"
            ).format(s=ident)
        )
        upsert = sql.SQL(_UPSERT).format(s=ident).as_bytes(None)

        rec = store.acquire("bench", "r1", owner=Owner(host="bench-host", pid=os.getpid()), lease_seconds=300)
        rec = rec.replace(
            positions={
                str(i): {"offset": 120_000 + i, "finished": False, "key": (i, f"2026-11-{i + 1:02d}")} for i in range(3)
            },
            state=_state(),
            fingerprints={str(i): f"sha256:{'ab' * 32}" for i in range(3)},
            done=120_000,
            failed=3,
        )
        text = encode_record(rec)  # the baselines send JSON of exactly the store's size
        plain = json.loads(text)  # the same data as plain JSON (tags already applied)

        holder = [rec]
        bare_holder = [
            bare.acquire("bench", "r2", owner=rec.owner, lease_seconds=300).replace(
                positions=rec.positions,
                state=rec.state,
                fingerprints=rec.fingerprints,
                done=rec.done,
                failed=rec.failed,
            )
        ]

        def store_save(k: int) -> None:
            r = holder[0]
            for _ in range(k):
                r = store.save(r.replace(done=r.done + 1), lease_seconds=300)
            holder[0] = r

        def bare_save(k: int) -> None:
            r = bare_holder[0]
            for _ in range(k):
                r = bare.save(r.replace(done=r.done + 1), lease_seconds=300)
            bare_holder[0] = r

        data = dict(plain)

        def raw_upsert(k: int) -> None:
            for _ in range(k):
                data["done"] += 1
                body = json.dumps(data, sort_keys=True, separators=(",", ":"))
                auto.execute(upsert, ("bench", "raw", rec.epoch, body))

        def raw_pre(k: int) -> None:
            for _ in range(k):
                auto.execute(upsert, ("bench", "pre", rec.epoch, text))

        def raw_txn(k: int) -> None:
            for _ in range(k):
                txn.execute(b"BEGIN")
                txn.execute(upsert, ("bench", "txn", rec.epoch, text))
                txn.execute(b"COMMIT")

        def codec(k: int) -> None:
            for _ in range(k):
                encode_record(rec)

        def dumps(k: int) -> None:
            for _ in range(k):
                json.dumps(plain, sort_keys=True, separators=(",", ":"))

        txn.autocommit = True  # the explicit BEGIN and COMMIT are its three round trips
        cases = {
            "store": store_save,
            "bare": bare_save,
            "raw": raw_upsert,
            "pre": raw_pre,
            "txn": raw_txn,
            "codec": codec,
            "dumps": dumps,
        }
        for fn in cases.values():  # warm up: connections, prepared statements, table pages
            fn(20)
        t = _common.interleaved(cases, n, repeat=repeat)
        raw, pre = "json.dumps + upsert, 1 autocommit stmt", "upsert, pre-encoded, 1 stmt"
        _common.report(
            f"PostgreSQL checkpoint latency ({len(text)} B record, median of {repeat} single saves)",
            [
                ("PostgresStore.save (CAS + history, 1 stmt)", t["store"], raw, t["raw"], 1.3),
                ("PostgresStore.save (CAS + history, 1 stmt)", t["store"], pre, t["pre"], None),
                ("PostgresStore.save, ?history=0 (CAS only)", t["bare"], raw, t["raw"], None),
                ("BEGIN / upsert / COMMIT (3 round trips)", t["txn"], pre, t["pre"], None),
                ("encode_record (the record codec)", t["codec"], "json.dumps of the same data", t["dumps"], None),
            ],
        )
    finally:
        store.close()
        bare.close()
        txn.close()
        auto.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE").format(s=ident))
        auto.close()


if __name__ == "__main__":
    main()
