"""The local stores against the raw durable writes they are built on, side by side.

    python bench/bench_stores.py [--quick] [--repeat N]

Runs in a temp directory under the CURRENT directory (not /tmp, which may be tmpfs,
where fsync costs nothing and every ratio lies); the filesystem type is printed.

* FileStore.save vs the raw floor of an atomic file: temp write of the same size as
  our document + fsync + rename + directory fsync. Target <= 1.3x.
* SQLiteStore.save vs a raw upsert of a record of the same size in one transaction
  (BEGIN IMMEDIATE / INSERT ... ON CONFLICT DO UPDATE / COMMIT, WAL, synchronous=FULL).
  Target <= 1.3x.
* The same two with the record's JSON encoding (restartable._checkpoint, the same for
  every store) added to the baselines: what the store itself adds.
* For information: the article's ``json.dump`` overwrite without fsync (not crash-safe),
  and pwrite + fdatasync in place on an open file (not atomic: the floor of any durable
  local write).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import interleaved, parser, report

from restartable._proc import current_owner
from restartable._checkpoint import Checkpoint, encode_record
from restartable.stores.file import FileStore
from restartable._sqlite.store import SQLiteStore


def realistic(rec: Checkpoint) -> Checkpoint:
    """A record like a real job's: three cursors, a state dict of ten keys, fingerprints."""
    positions = {
        "0": {"offset": 1_234_567, "finished": False, "key": (98765, dt.date(2026, 11, 27))},
        "files": {"offset": 42, "finished": False},
        "orders": {"offset": 5_000, "finished": True, "key": (5000,)},
    }
    state = {
        "rows_written": 1_234_567,
        "bytes_out": 987_654_321,
        "errors": 3,
        "last_id": "ord_01HZX8K5N2",
        "ratio": 0.8731,
        "batch": 617,
        "output": "s3://bucket/exports/2026-11-27/part-00617.parquet",
        "seen_countries": ["DE", "FR", "NL", "US", "JP"],
        "totals": {"eur": "123456.78", "usd": "98765.43"},
        "started_at": dt.datetime(2026, 11, 27, 2, 0, tzinfo=dt.UTC),
    }
    fingerprints = {"0": {"kind": "range", "n": 5_000_000}, "files": {"sha256": "ab" * 32}}
    return rec.replace(positions=positions, state=state, fingerprints=fingerprints, done=1_234_567)


def filesystem_of(path: str) -> str:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def raw_atomic_file(directory: str, size: int) -> Callable[[int], None]:
    data = os.urandom(size // 2).hex().encode()[:size]
    target = os.path.join(directory, "raw.ckpt")
    tmp = os.path.join(directory, ".raw.ckpt.tmp")

    def run(n: int) -> None:
        for _ in range(n):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, target)
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)

    return run


def raw_sqlite_upsert(path: str, text: str) -> tuple[Callable[[int], None], sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE kv (job TEXT, run TEXT, record TEXT, PRIMARY KEY (job, run))")
    sql = "INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT (job, run) DO UPDATE SET record = excluded.record"
    # Every write must change the row: SQLite skips writing a cell whose bytes are unchanged,
    # and a transaction that dirties no page commits without touching the disk.
    texts = [f"{i:08d}{text[8:]}" for i in range(1000)]
    counter = [0]

    def run(n: int) -> None:
        i = counter[0]
        for _ in range(n):
            i += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, ("job", "run", texts[i % 1000]))
            conn.execute("COMMIT")
        counter[0] = i

    return run, conn


def store_saves(store, rec: Checkpoint) -> Callable[[int], None]:
    state = {"rec": rec}

    def run(n: int) -> None:
        cur = state["rec"]
        for _ in range(n):
            cur = store.save(cur.replace(done=cur.done + 1), lease_seconds=60)
        state["rec"] = cur

    return run


def article_json_dump(directory: str, data: dict) -> Callable[[int], None]:
    path = os.path.join(directory, "article.json")

    def run(n: int) -> None:
        for _ in range(n):
            with open(path, "w") as f:
                json.dump(data, f)

    return run


def pwrite_fdatasync(directory: str, size: int) -> tuple[Callable[[int], None], int]:
    fd = os.open(os.path.join(directory, "inplace.bin"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    data = b"x" * size
    os.pwrite(fd, data, 0)
    os.fsync(fd)

    def run(n: int) -> None:
        for _ in range(n):
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)

    return run, fd


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    # Short rounds, many of them: on a shared disk the load changes within seconds. Each
    # round runs every case back to back, so a ratio within a round compares like with
    # like; the medians of those ratios are printed besides the ratios of the medians.
    n = 5 if args.quick else 10
    repeat = args.repeat or (4 if args.quick else 100)
    work = tempfile.mkdtemp(prefix=".bench-stores-", dir=os.getcwd())
    try:
        fs = filesystem_of(work)
        print(f"directory {work} on {fs}; {n} operations per case and round, median of {repeat} rounds")
        if fs in ("tmpfs", "ramfs"):
            print("WARNING: this filesystem does not persist: fsync is free and the ratios mean nothing")

        owner = current_owner()
        fstore = FileStore(os.path.join(work, "file"))
        frec = realistic(fstore.acquire("job", "run", owner=owner, lease_seconds=60))
        sstore = SQLiteStore(os.path.join(work, "sqlite", "ckpt.db"))
        srec = realistic(sstore.acquire("job", "run", owner=owner, lease_seconds=60))
        file_save, sqlite_save = store_saves(fstore, frec), store_saves(sstore, srec)
        file_save(60)  # the steady state: a full history in the document

        doc_size = os.path.getsize(os.path.join(work, "file", "job", "run.ckpt"))
        text = encode_record(srec)
        raw_file = raw_atomic_file(work, doc_size)
        raw_sql, raw_conn = raw_sqlite_upsert(os.path.join(work, "raw.db"), text)
        # The steady state of both WALs: past their first checkpoint (1000 frames), SQLite
        # rewrites the WAL in place; before it, every commit also grows the file, and an
        # fdatasync that must journal a new size costs about twice as much.
        raw_sql(1100)
        sqlite_save(600)  # two frames per save: the runs row and its history entry
        inplace, inplace_fd = pwrite_fdatasync(work, doc_size)
        article = article_json_dump(work, json.loads(text))
        record = srec

        def encode(n: int) -> None:
            for i in range(n):
                encode_record(record.replace(done=i))

        print(f"file document {doc_size} bytes; SQLite record {len(text)} bytes")

        cases = {
            "raw file": raw_file,
            "file save": file_save,
            "raw sqlite": raw_sql,
            "sqlite save": sqlite_save,
            "article": article,
            "inplace": inplace,
            "encode": encode,
        }
        rounds = [interleaved(cases, n, repeat=1) for _ in range(repeat)]
        t = {k: statistics.median(r[k] for r in rounds) for k in cases}
        report(
            "checkpoint write, per save (median)",
            [
                ("FileStore.save", t["file save"], "temp+fsync+rename+dir fsync", t["raw file"], 1.3),
                ("SQLiteStore.save", t["sqlite save"], "raw upsert in one transaction", t["raw sqlite"], 1.3),
                (
                    "article json.dump, no fsync (unsafe)",
                    t["article"],
                    "temp+fsync+rename+dir fsync",
                    t["raw file"],
                    None,
                ),
                (
                    "pwrite+fdatasync in place (not atomic)",
                    t["inplace"],
                    "temp+fsync+rename+dir fsync",
                    t["raw file"],
                    None,
                ),
                ("SQLiteStore.save", t["sqlite save"], "FileStore.save", t["file save"], None),
            ],
        )
        # Where the time beyond the raw write goes: every store encodes the record (the JSON
        # codec in restartable._checkpoint); these rows charge the baselines with it too.
        report(
            "the same, with the record's encoding added to the baselines",
            [
                ("encode_record + replace alone", t["encode"], "raw upsert in one transaction", t["raw sqlite"], None),
                ("FileStore.save", t["file save"], "raw file + encode_record", t["raw file"] + t["encode"], 1.3),
                (
                    "SQLiteStore.save",
                    t["sqlite save"],
                    "raw upsert + encode_record",
                    t["raw sqlite"] + t["encode"],
                    1.3,
                ),
            ],
        )
        print("\n== paired: median (and quartiles) of the per-round ratios")
        for name, num, den in [
            ("FileStore.save / raw atomic file", ["file save"], ["raw file"]),
            ("SQLiteStore.save / raw upsert", ["sqlite save"], ["raw sqlite"]),
            ("FileStore.save / (raw file + encode)", ["file save"], ["raw file", "encode"]),
            ("SQLiteStore.save / (raw upsert + encode)", ["sqlite save"], ["raw sqlite", "encode"]),
        ]:
            ratios = sorted(sum(r[k] for k in num) / sum(r[k] for k in den) for r in rounds)
            q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            print(f"{name:<44} {med:5.2f}x   ({q1:.2f}-{q3:.2f})")
        raw_conn.close()
        os.close(inplace_fd)
        fstore.close()
        sstore.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
