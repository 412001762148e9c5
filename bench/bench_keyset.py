"""Keyset throughput of job.batches(PostgresTable) and of exactly-once batches, against raw psycopg.

    python bench/bench_keyset.py [--quick] [--url postgresql://postgres@127.0.0.1:5432/postgres]

Runs against the shared server in a schema of its own (table and checkpoints), dropped
at the end. Each case reads the whole table; the cases take turns (median of several
rounds) and the ratios are throughputs (rows/s) against the baseline measured beside them:

* ``job.batches(PostgresTable(...))`` with its default checkpoint after every batch
  (a durable save in the PostgreSQL store), and with a time-based checkpoint
  (``seconds=5``), against a raw psycopg loop of the same bounded keyset queries
  (``WHERE id > %s ORDER BY id LIMIT %s``, dict rows, autocommit). Target: >= 0.9x.
* For information, against one server-side cursor reading the whole table in one
  transaction (``fetchmany`` of a batch at a time): what a cursor held across
  checkpoint commits would cost if it could survive them.
* Exactly-once: ``job.batches`` + ``with job.transaction()`` + one INSERT of the batch
  (``unnest`` of arrays), checkpoint and output in one commit, against the same reads
  and the same INSERT committed on a connection of its own once per batch.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

from restartable import Job
from restartable._postgres.table import PostgresTable

BATCH = 1000


def _throughputs(title: str, rows: list[tuple[str, float, str, float, float | None]]) -> None:
    """Print ``(case, s/row, baseline, s/row, target)`` as rows/s and throughput ratios."""
    print(f"\n== {title}")
    print(f"{'case':<46} {'rows/s':>10}   {'baseline':<34} {'rows/s':>10}  {'ratio':>6}  target")
    for name, t, bname, bt, target in rows:
        ratio = bt / t if t else float("nan")
        verdict = "" if target is None else (f">= {target:g}x " + ("ok" if ratio >= target else "MISSED"))
        print(f"{name:<46} {1 / t:10,.0f}   {bname:<34} {1 / bt:10,.0f}  {ratio:5.2f}x  {verdict}")


def main() -> None:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("RESTARTABLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args()
    n = 200_000 if args.quick else 1_000_000
    n_eo = 100_000 if args.quick else 300_000
    repeat = args.repeat or (3 if args.quick else 5)
    schema = f"rt_bench_ks_{uuid.uuid4().hex[:8]}"
    s = sql.Identifier(schema)
    store = f"{args.url}?schema={schema}"
    admin = psycopg.connect(args.url, autocommit=True)
    raw = psycopg.connect(args.url, autocommit=True)
    out_conn = psycopg.connect(args.url)
    runs = iter(range(1 << 30))

    def q(text: str) -> bytes:
        return sql.SQL(text).format(s=s).as_bytes(admin)

    try:
        admin.execute(q("CREATE SCHEMA {s}"))
        for name, rows in (("src", n), ("src_eo", n_eo)):
            t = sql.Identifier(schema, name)
            admin.execute(sql.SQL("CREATE TABLE {} (id bigint NOT NULL, v bigint NOT NULL, pad text NOT NULL)").format(t))
            admin.execute(sql.SQL("INSERT INTO {} SELECT g, g * 3, md5(g::text) FROM generate_series(1, %s) g")
                          .format(t), (rows,))
            admin.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(t))
            admin.execute(sql.SQL("VACUUM ANALYZE {}").format(t))
        # Logged, like real output: every commit of either case waits for its WAL flush.
        admin.execute(q("CREATE TABLE {s}.out (id bigint, v bigint)"))
        out_conn.execute("SET synchronous_commit TO on")
        out_conn.commit()
        first = q("SELECT id, v, pad FROM {s}.src ORDER BY id LIMIT %s")
        following = q("SELECT id, v, pad FROM {s}.src WHERE id > %s ORDER BY id LIMIT %s")
        first_eo = q("SELECT id, v, pad FROM {s}.src_eo ORDER BY id LIMIT %s")
        following_eo = q("SELECT id, v, pad FROM {s}.src_eo WHERE id > %s ORDER BY id LIMIT %s")
        insert = q("INSERT INTO {s}.out SELECT * FROM unnest(%s::bigint[], %s::bigint[])")

        def job(**options: object) -> Callable[[int], None]:
            def go(k: int) -> None:
                with Job("bench", run=f"r{next(runs)}", store=store, progress=False, handle_signals=False) as j:
                    got = sum(len(b) for b in j.batches(PostgresTable(args.url, "src", schema=schema,
                                                                      batch_size=BATCH), **options))
                assert got == k, got
            return go

        def raw_loop(k: int) -> None:
            got, last = 0, None
            with raw.cursor(row_factory=dict_row) as cur:
                while True:
                    if last is None:
                        cur.execute(first, (BATCH,))
                    else:
                        cur.execute(following, (last, BATCH))
                    rows = cur.fetchall()
                    if not rows:
                        break
                    got += len(rows)
                    last = rows[-1]["id"]
                    if len(rows) < BATCH:
                        break
            assert got == k, got

        def server_cursor(k: int) -> None:
            got = 0
            with psycopg.connect(args.url) as conn, conn.transaction(), \
                    conn.cursor(name="whole", row_factory=dict_row) as cur:
                cur.itersize = BATCH
                cur.execute(q("SELECT id, v, pad FROM {s}.src ORDER BY id"))
                while rows := cur.fetchmany(BATCH):
                    got += len(rows)
            assert got == k, got

        timings = _common.interleaved(
            {
                "job": job(),
                "job_every10": job(every=10),
                "job_seconds": job(every=1 << 30, seconds=5.0),
                "raw": raw_loop,
                "cursor": server_cursor,
            },
            n,
            repeat=repeat,
        )

        def truncate() -> None:
            admin.execute(q("TRUNCATE {s}.out"))

        def eo_job(k: int) -> None:
            truncate()
            with Job("bench-eo", run=f"r{next(runs)}", store=store, progress=False, handle_signals=False) as j:
                for batch in j.batches(PostgresTable(args.url, "src_eo", schema=schema, batch_size=BATCH)):
                    with j.transaction() as tx:
                        tx.execute(insert, ([r["id"] for r in batch], [r["v"] for r in batch]))
            assert j.record is not None and j.record.done == k

        def eo_raw(k: int) -> None:
            truncate()
            got, last = 0, None
            with raw.cursor(row_factory=dict_row) as cur:
                while True:
                    if last is None:
                        cur.execute(first_eo, (BATCH,))
                    else:
                        cur.execute(following_eo, (last, BATCH))
                    rows = cur.fetchall()
                    if not rows:
                        break
                    out_conn.execute(insert, ([r["id"] for r in rows], [r["v"] for r in rows]))
                    out_conn.commit()
                    got += len(rows)
                    last = rows[-1]["id"]
                    if len(rows) < BATCH:
                        break
            assert got == k, got

        eo = _common.interleaved({"job": eo_job, "raw": eo_raw}, n_eo, repeat=repeat)
    finally:
        admin.execute(q("DROP SCHEMA IF EXISTS {s} CASCADE"))
        for c in (admin, raw, out_conn):
            c.close()

    print(f"PostgreSQL {args.url.split('@')[-1]}: {n:,} rows (id bigint, v bigint, pad text), batches of "
          f"{BATCH:,}, dict rows; medians of {repeat} rounds")
    _throughputs(
        "keyset reads",
        [
            ("job.batches(PostgresTable), checkpoint/batch", timings["job"], "raw psycopg keyset loop", timings["raw"], 0.9),
            ("job.batches(PostgresTable), every=10", timings["job_every10"], "raw psycopg keyset loop", timings["raw"],
             0.9),
            ("job.batches(PostgresTable), seconds=5", timings["job_seconds"], "raw psycopg keyset loop", timings["raw"],
             0.9),
            ("job.batches(PostgresTable), checkpoint/batch", timings["job"], "one server-side cursor",
             timings["cursor"], None),
            ("raw psycopg keyset loop", timings["raw"], "one server-side cursor", timings["cursor"], None),
        ],
    )
    _throughputs(
        f"exactly-once batches ({n_eo:,} rows, one INSERT per batch)",
        [("job.batches + job.transaction + INSERT", eo["job"], "same reads, INSERT + COMMIT per batch", eo["raw"],
          None)],
    )


if __name__ == "__main__":
    main()
