"""What the Redis store adds to the contract: URL options, retention, loss detection, outages, TLS.

Tests that stop or restart a server use a private redis-server (tests/redisserver.py);
the shared one is used only through the ``redis_url`` fixture, under its own prefix.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

# tests/ holds the private-server helper; put it on the path whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redisserver
from redisserver import RedisServer
from restartable._checkpoint import COMPLETED, FAILED, Owner
from restartable.errors import (
    EXIT_TEMPORARY,
    CheckpointLost,
    ConfigError,
    Fenced,
    MissingDriver,
    PermissionDenied,
    RunLocked,
    StoreUnavailable,
)
from restartable.stores import open_store
from restartable.stores.base import EPOCH_STEP

# pytest finds fixtures by their names in the module.
private_redis = redisserver.private_redis
redis_server_factory = redisserver.redis_server_factory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)


def _client(url: str):
    import redis

    return redis.Redis.from_url(url.split("?", 1)[0])


def _prefix(url: str) -> str:
    return url.split("prefix=", 1)[1].split("&", 1)[0]


# -- URL options ------------------------------------------------------------------


def test_options_are_removed_before_redis_py_sees_the_url(redis_url):
    url = f"{redis_url}&ttl=1h&retry=5s&socket_timeout=7"
    with open_store(url) as s:
        kwargs = s._client.connection_pool.connection_kwargs
        assert not {"prefix", "ttl"} & set(kwargs)
        assert not isinstance(kwargs["retry"], str)  # redis-py's Retry object, not our "5s"
        assert kwargs["socket_timeout"] == 7.0  # redis-py's own options still reach it
        assert s._ttl_ms == "3600000" and s._retry == 5.0
        s.acquire("job", "r1", owner=ME, lease_seconds=30)


def test_read_timeout_sets_the_reply_deadline(redis_url):
    cases = {"": 60.0, "&read_timeout=2.5": 2.5, "&read_timeout=500ms": 0.5, "&read_timeout=0": None}
    for query, expected in cases.items():
        with open_store(redis_url + query) as s:
            assert s._client.connection_pool.connection_kwargs["socket_timeout"] == expected, query
    with pytest.raises(ConfigError, match="read_timeout"):
        open_store(f"{redis_url}&read_timeout=soon")
    # redis-py's own name still works alone; both at once is ambiguous.
    with open_store(f"{redis_url}&socket_timeout=7") as s:
        assert s._client.connection_pool.connection_kwargs["socket_timeout"] == 7.0
    with pytest.raises(ConfigError, match="keep only"):
        open_store(f"{redis_url}&read_timeout=5&socket_timeout=7")


def test_frozen_server_fails_within_the_budget_then_recovers(private_redis):
    """SIGSTOP: the kernel still accepts connections and requests, nothing ever answers.
    Each attempt waits read_timeout, the retries stop after the retry budget: StoreUnavailable,
    not a hang; once the server runs again, the same store works."""
    with open_store(f"{private_redis.url}?read_timeout=1&retry=2") as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=60)
        private_redis.freeze()
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match="retry") as info:
                s.load("job", "r1")
            elapsed = time.monotonic() - t0
        finally:
            private_redis.thaw()
        # The first attempt's deadline plus the budget, plus the deadline of the attempt in
        # flight when the budget ran out (3s unloaded), with slack for a loaded machine.
        assert 2.0 <= elapsed < 8.0, elapsed
        assert "Timeout" in str(info.value) or "timed out" in str(info.value)
        assert s.load("job", "r1").epoch == rec.epoch
        s.save(rec.replace(done=4), lease_seconds=60)
        assert s.load("job", "r1").done == 4


def test_unknown_option_is_a_config_error(redis_server):
    with pytest.raises(ConfigError, match="bogus"):
        open_store(f"{redis_server}?bogus=1")
    with pytest.raises(ConfigError, match="ttl"):
        open_store(f"{redis_server}?ttl=soon")


def test_every_key_is_under_the_prefix(redis_url):
    prefix = _prefix(redis_url)
    with open_store(redis_url) as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        s.save(rec.replace(done=1), lease_seconds=30)
        s.mark("job", "r1", "dir/a:b*", "x.csv", 1, epoch=rec.epoch)
    keys = sorted(k.decode() for k in _client(redis_url).scan_iter(match=f"{prefix}*"))
    assert keys == [
        f"{prefix}{k}"
        for k in ("epoch-floor", "hist:job:r1", "instance", "markers:job:r1:dir%2Fa%3Ab%2A", "run:job:r1", "runs")
    ]


def test_cursor_and_item_names_may_hold_anything(redis_url):
    with open_store(redis_url) as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        odd = {"a:b": 1, "*?[x]": 2, "ü \udcff": 3, "": 4}
        for key, value in odd.items():
            s.mark("job", "r1", "c:*:\udcfe", key, value, epoch=rec.epoch)
            s.mark("job", "r1", "", key, value, epoch=rec.epoch)
        assert s.markers("job", "r1", "c:*:\udcfe") == odd == s.markers("job", "r1", "")
        assert s.markers("job", "r1", "c:*") == {}
        assert s.delete("job", "r1")
        assert s.markers("job", "r1", "c:*:\udcfe") == {} == s.markers("job", "r1", "")


def test_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` sees when not installed
    with pytest.raises(MissingDriver, match=r"pip install 'restartable\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


# -- passwords -------------------------------------------------------------------


def test_password_never_printed(redis_server_factory):
    server: RedisServer = redis_server_factory(password="s3cret-pw")
    good = server.url
    assert "s3cret-pw" in good
    with open_store(good) as s:
        assert "s3cret-pw" not in s.display and "***" in s.display
        s.acquire("job", "r1", owner=ME, lease_seconds=30)
    for bad in (good.replace("s3cret-pw", "wrong-pw"), good.replace(":s3cret-pw@", "")):
        with open_store(bad + "?retry=1s") as s:
            with pytest.raises(PermissionDenied) as info:
                s.load("job", "r1")
            message = str(info.value)
            assert "wrong-pw" not in message and "s3cret-pw" not in message
            assert "127.0.0.1" in message and "PASSWORD" in message


# -- retention -------------------------------------------------------------------


def test_ttl_expires_the_run(redis_url):
    with open_store(f"{redis_url}&ttl=1s") as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        s.save(rec.replace(status=COMPLETED), lease_seconds=None)
        assert s.load("job", "r1") is not None
        time.sleep(1.5)  # the keys live 1s + a tenth of it after the last write
        assert s.load("job", "r1") is None
        assert s.list_runs() == [] and s.history("job", "r1") == []
    # Only the instance key (it tells a later reset from a loss) and the epoch floor stay: they never expire.
    prefix = _prefix(redis_url)
    assert sorted(k.decode() for k in _client(redis_url).scan_iter(match=f"{prefix}*")) == [
        f"{prefix}epoch-floor",
        f"{prefix}instance",
    ]


def test_a_run_made_again_after_its_keys_expired_starts_above_its_old_epochs(redis_url, monkeypatch):
    """The keys of an idle run expire (``ttl``) and leave nothing behind; a stale runner of it
    may still hold its epoch. The run made again must start above it, even when the client's
    clock (which seeds first epochs) stepped back: the prefix's epoch floor remembers it."""
    with open_store(f"{redis_url}&ttl=1s") as s:
        old = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        old = s.acquire("job", "r1", owner=ME, lease_seconds=30, steal_epoch=old.epoch)  # a higher epoch
        time.sleep(1.5)
        assert s.load("job", "r1") is None
        monkeypatch.setattr(time, "time_ns", lambda: (old.epoch - 1) * 1000)  # the clock stepped back
        new = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        monkeypatch.undo()
        assert new.epoch > old.epoch
        with pytest.raises(Fenced):
            s.save(old.replace(state={"stale": True}), lease_seconds=30)
        assert s.load("job", "r1").state == {}


def test_a_store_written_before_the_epoch_floor_keeps_working(redis_url, monkeypatch):
    prefix, client = _prefix(redis_url), _client(redis_url)
    with open_store(redis_url) as s:
        held = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        client.delete(f"{prefix}epoch-floor")  # as a restartable without the floor left it
        held = s.save(held.replace(done=1), lease_seconds=30)
        s.renew("job", "r1", epoch=held.epoch, lease_seconds=30)
        assert s.delete("job", "r1")  # the delete raises the floor to the epoch it removes
        assert int(client.get(f"{prefix}epoch-floor")) == held.epoch
        monkeypatch.setattr(time, "time_ns", lambda: (held.epoch - 10) * 1000)
        again = s.acquire("job", "r1", owner=OTHER, lease_seconds=30)
        monkeypatch.undo()
        assert 0 < again.epoch - held.epoch <= EPOCH_STEP


@pytest.mark.parametrize("status", [COMPLETED, FAILED])
def test_every_save_refreshes_the_ttl_of_all_keys(redis_url, status):
    prefix, client = _prefix(redis_url), _client(redis_url)
    with open_store(f"{redis_url}&ttl=3s") as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        s.mark("job", "r1", "files", "a", 1, epoch=rec.epoch)
        time.sleep(1.2)
        # Every key of the run; the prefix's instance key never expires (test_ttl_expires_the_run).
        keys = [
            k
            for k in client.scan_iter(match=f"{prefix}*")
            if k not in (f"{prefix}instance".encode(), f"{prefix}epoch-floor".encode())
        ]
        assert len(keys) == 4 and all(client.pttl(k) < 2300 for k in keys)
        s.save(rec.replace(status=status), lease_seconds=None)
        # Expiries are pushed to ttl + a tenth of it (0.3s here), so most writes skip the push.
        assert all(2800 < client.pttl(k) <= 3300 for k in keys)
        time.sleep(2.4)  # 3.6s after the acquire (past its expiry), 2.4s after the save
        assert s.load("job", "r1").status == status
        assert s.markers("job", "r1", "files") == {"a": 1}


def test_ttl_zero_keeps_keys(redis_url):
    with open_store(f"{redis_url}&ttl=0") as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        s.save(rec, lease_seconds=None)
    client = _client(redis_url)
    keys = list(client.scan_iter(match=f"{_prefix(redis_url)}*"))
    assert keys and all(client.pttl(k) == -1 for k in keys)


# -- fencing -----------------------------------------------------------------------


def test_stale_runner_in_another_store_object_is_fenced(redis_url):
    with open_store(redis_url) as a, open_store(redis_url) as b:
        old = a.acquire("job", "r1", owner=ME, lease_seconds=0.2)
        time.sleep(0.4)
        new = b.acquire("job", "r1", owner=OTHER, lease_seconds=30)
        b.save(new.replace(done=50), lease_seconds=30)
        with pytest.raises(Fenced, match=str(new.epoch)):
            a.save(old.replace(done=7), lease_seconds=30)
        with pytest.raises(Fenced):
            a.renew("job", "r1", epoch=old.epoch, lease_seconds=30)
        with pytest.raises(Fenced):
            a.mark("job", "r1", "files", "x", 1, epoch=old.epoch)
        assert a.load("job", "r1").done == 50
        assert a.markers("job", "r1", "files") == {}


def test_reset_is_fenced_not_lost(redis_url):
    with open_store(redis_url) as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        s.delete("job", "r1")
        for op in (
            lambda: s.save(rec, lease_seconds=30),
            lambda: s.renew("job", "r1", epoch=rec.epoch, lease_seconds=30),
        ):
            with pytest.raises(Fenced, match="was reset"):
                op()


# -- the server loses its data ---------------------------------------------------------


def test_restart_without_persistence_raises_checkpoint_lost(private_redis):
    with open_store(f"{private_redis.url}?retry=10s") as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        rec = s.save(rec.replace(done=40, state={"k": 1}), lease_seconds=30)
        private_redis.restart()
        with pytest.raises(CheckpointLost) as info:
            s.save(rec.replace(done=41), lease_seconds=30)
        assert info.value.exit_code == EXIT_TEMPORARY and "LOST" in str(info.value)
        with pytest.raises(CheckpointLost):
            s.renew("job", "r1", epoch=rec.epoch, lease_seconds=30)
        with pytest.raises(CheckpointLost):
            s.mark("job", "r1", "files", "a", 1, epoch=rec.epoch)

        restored = s.restore(rec.replace(done=41), lease_seconds=30)
        loaded = s.load("job", "r1")
        assert (loaded.epoch, loaded.done, loaded.state, loaded.owner) == (rec.epoch, 41, {"k": 1}, ME)
        assert loaded.lease_expires == pytest.approx(restored.lease_expires)
        s.save(loaded.replace(done=42), lease_seconds=30)  # the runner carries on
        s.renew("job", "r1", epoch=rec.epoch, lease_seconds=30)
        with pytest.raises(RunLocked):
            s.acquire("job", "r1", owner=OTHER, lease_seconds=30)

        # After the restore, a reset is a reset again.
        s.delete("job", "r1")
        with pytest.raises(Fenced):
            s.save(loaded, lease_seconds=30)


# -- connection loss -------------------------------------------------------------------


def test_server_down_longer_than_the_budget_is_store_unavailable(private_redis):
    with open_store(f"{private_redis.url}?retry=2s") as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        private_redis.stop()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            s.save(rec, lease_seconds=30)
        elapsed = time.monotonic() - t0
        assert info.value.exit_code == EXIT_TEMPORARY
        assert 1.5 < elapsed < 20
        assert f"127.0.0.1:{private_redis.port}" in str(info.value) and "retry" in str(info.value)


def test_brief_outage_is_ridden_out(private_redis):
    with open_store(f"{private_redis.url}?retry=30s") as s:
        s.acquire("job", "r1", owner=ME, lease_seconds=30)
        private_redis.stop()
        restarter = threading.Timer(1.0, private_redis.start)
        restarter.start()
        try:
            rec = s.acquire("job", "r2", owner=ME, lease_seconds=30)
        finally:
            restarter.join()
        assert s.load("job", "r2").epoch == rec.epoch


# -- TLS -------------------------------------------------------------------------------


def test_tls_connection(redis_server_factory):
    server: RedisServer = redis_server_factory(tls=True)
    cert = server.cert[0]
    assert server.url.startswith("rediss://")
    for query in ("ssl_cert_reqs=none", f"ssl_ca_certs={cert}"):
        with open_store(f"{server.url}?{query}&prefix=tls:") as s:
            rec = s.acquire("job", query[:8], owner=ME, lease_seconds=30)
            s.save(rec.replace(done=3), lease_seconds=None)
            assert s.load("job", query[:8]).done == 3
    # An unverifiable certificate is a configuration error, reported at once, not retried for 60s.
    t0 = time.monotonic()
    with open_store(server.url) as s, pytest.raises(ConfigError, match="ssl_ca_certs"):
        s.load("job", "x")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("path", ["/notadb", "/0x1", "/1/2", "/-1", "/١"])
def test_a_path_that_is_not_a_database_number_is_refused(path):
    # redis-py would quietly open database 0 (or 12 for /1/2).
    with pytest.raises(ConfigError, match="database number"):
        open_store(f"redis://127.0.0.1:1{path}")


@pytest.mark.parametrize("path", ["", "/", "/0", "/15"])
def test_a_database_number_or_none_is_accepted(path):
    with open_store(f"redis://127.0.0.1:1{path}") as s:  # lazy: nothing connects yet
        assert s._client.connection_pool.connection_kwargs.get("db", 0) == (int(path[1:]) if path[1:] else 0)


def test_a_value_redis_py_refuses_is_a_config_error():
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        open_store("rediss://127.0.0.1:1/0?ssl_cert_reqs=bogus")
