"""Checkpoint latency of the Redis store against a bare compare-and-set script.

    python bench/bench_redis.py [--quick] [--url redis://127.0.0.1:6379/0]

Runs against the shared Redis under a prefix of its own, deleted at the end.
Measured side by side, alternating:

* ``RedisStore.save`` of a realistic record (positions of three cursors, a state
  dict of ~40 values, fingerprints: ~2 KB of JSON), holding the lease.
* The baseline: one EVALSHA of a bare script that GETs an epoch, compares it and
  SETs the record's JSON (same payload), on the same connection pool, encoding
  the record with the same codec (``encode_record``) on every call, as any store
  of these records must. The ratio is the store's own cost: the lease fields,
  TIME, the history entry, the retention refresh, the error translation.

Two more rows, for information: the same bare script with ``json.dumps`` of the
record's plain JSON data (what a hand-written checkpoint without the tagged codec
pays) and with the payload pre-encoded (network + script only).
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

_RAW_CAS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


def _state() -> dict:
    state: dict = {f"counter_{i}": i * 1013 for i in range(20)}
    state.update({f"label_{i}": f"partition-{i:04d}/shard-{i % 7}" for i in range(10)})
    state["seen_ids"] = list(range(1000, 1040))
    state["totals"] = {"rows": 1_234_567, "bytes": 987_654_321, "ratio": 0.8125, "last": "2026-11-27T10:00:00"}
    return state


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("RESTARTABLE_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    args = p.parse_args()
    n = 50 if args.quick else 400
    repeat = args.repeat or (3 if args.quick else 9)
    prefix = f"rt_bench_{uuid.uuid4().hex[:10]}:"

    store = open_store(f"{args.url}?prefix={prefix}")
    client = store._client  # the same pool for the baseline: only the scripts differ
    try:
        rec = store.acquire("bench", "r1", owner=Owner(host="bench-host", pid=os.getpid()), lease_seconds=300)
        positions = {
            str(i): {"offset": 100_000 * i + 17, "finished": i == 0, "key": [i, f"k-{i:08d}"]} for i in range(3)
        }
        rec = rec.replace(positions=positions, state=_state(), done=300_017, failed=3,
                          fingerprints={str(i): f"sha256:{uuid.UUID(int=i).hex * 2}" for i in range(3)})
        payload = encode_record(rec)
        plain = json.loads(payload)  # the same data as plain JSON (tags already applied)
        cas = client.register_script(_RAW_CAS)
        epoch_key, rec_key = f"{prefix}raw:epoch", f"{prefix}raw:rec"
        client.set(epoch_key, str(rec.epoch))
        pre_encoded = json.dumps(plain, sort_keys=True, separators=(",", ":"))

        holder = [rec]

        def store_save(k: int) -> None:
            cur = holder[0]
            for i in range(k):
                cur = store.save(cur.replace(done=cur.done + 1), lease_seconds=300)
            holder[0] = cur

        def raw_codec(k: int) -> None:
            cur = rec
            for i in range(k):
                cur = cur.replace(done=cur.done + 1)
                if not cas(keys=[epoch_key, rec_key], args=[str(rec.epoch), encode_record(cur)]):
                    raise RuntimeError("baseline CAS refused")

        def raw_cas(k: int) -> None:
            data = dict(plain)
            for i in range(k):
                data["done"] = plain["done"] + i
                body = json.dumps(data, sort_keys=True, separators=(",", ":"))
                if not cas(keys=[epoch_key, rec_key], args=[str(rec.epoch), body]):
                    raise RuntimeError("baseline CAS refused")

        def raw_cas_pre(k: int) -> None:
            for _ in range(k):
                if not cas(keys=[epoch_key, rec_key], args=[str(rec.epoch), pre_encoded]):
                    raise RuntimeError("baseline CAS refused")

        cases = {"save": store_save, "codec": raw_codec, "raw": raw_cas, "pre": raw_cas_pre}
        for fn in cases.values():  # warm up: scripts loaded, pool filled
            fn(20)
        t = _common.interleaved(cases, n, repeat=repeat)
        size = f"{len(payload) / 1024:.1f} KB"
        _common.report(
            f"Redis checkpoint latency ({args.url.split('@')[-1]}, record {size}, n={n} x {repeat}, median)",
            [
                ("RedisStore.save (lease held)", t["save"], "EVALSHA CAS + encode_record", t["codec"], 1.3),
                ("RedisStore.save (lease held)", t["save"], "EVALSHA CAS + json.dumps", t["raw"], None),
                ("RedisStore.save (lease held)", t["save"], "EVALSHA CAS, pre-encoded", t["pre"], None),
            ],
        )
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        store.close()


if __name__ == "__main__":
    main()
