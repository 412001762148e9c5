"""A private redis-server for tests that stop, restart or misconfigure a server.

The shared Redis on 6379 is never touched here: each :class:`RedisServer` runs the
installed ``redis-server`` binary on a free loopback port, by default without
persistence (``--save "" --appendonly no``), so a restart loses every key exactly as
a production Redis without persistence does. With ``appendonly=True`` it runs
``--appendonly yes --appendfsync always`` instead, so a restart (even a SIGKILL)
keeps every acknowledged write and only the server's ``run_id`` changes. Optional
``--requirepass`` and TLS. ``freeze()``/``thaw()`` (SIGSTOP/SIGCONT) make a server
that accepts connections and never answers.

Fixtures: ``private_redis`` (a plain server, stopped after the test) and
``redis_server_factory`` (call it with ``password=`` / ``tls=True`` /
``appendonly=True`` for variants).
Import them into a test module; outside CI a missing binary skips, with CI=true
it fails (``unavailable()`` of tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ci_env import unavailable

__all__ = ["RedisServer", "private_redis", "redis_server_factory", "self_signed_cert"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Make a one-day self-signed certificate for localhost / 127.0.0.1; return (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key.chmod(0o600)
    return cert, key


class RedisServer:
    """One redis-server process on 127.0.0.1, restartable on the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        cert: tuple[Path, Path] | None = None,
        appendonly: bool = False,
    ):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.password = password
        self.cert = cert
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @property
    def url(self) -> str:
        """The server's URL (with the password when there is one; TLS URLs need a CA or ssl_cert_reqs)."""
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--daemonize",
            "no",
        ]
        # fsync on every write: a SIGKILL loses nothing that was acknowledged.
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        if self.cert:
            cert, key = self.cert
            argv += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(cert),
                "--tls-auth-clients",
                "no",
            ]
        else:
            argv += ["--port", str(self.port)]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        import redis

        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = self.url + ("?ssl_cert_reqs=none" if self.tls else "")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                self.proc = None
                raise RuntimeError(f"redis-server exited at start: {log}")
            try:
                client = redis.Redis.from_url(probe, socket_timeout=1, socket_connect_timeout=1)
                try:
                    client.ping()
                    return
                finally:
                    client.close()
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s") from None
                time.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP the server: connections are still accepted (by the kernel), nothing answers."""
        assert self.proc is not None, "not running"
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server: it answers everything that waited."""
        if self.proc is not None and self.frozen:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL the server (a crash: with appendonly, acknowledged writes survive)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None
        self.frozen = False

    def stop(self) -> None:
        """Stop the server (SIGTERM; without persistence, every key is lost)."""
        if self.proc is None:
            return
        self.thaw()  # a stopped process would hold SIGTERM pending until killed
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port (keeping the data only with ``appendonly``)."""
        self.stop()
        self.start()


@pytest.fixture
def redis_server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Make started private servers: ``factory(password=None, tls=False, appendonly=False)``; all stopped
    afterwards."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable("redis-py is not installed (pip install 'restartable[redis]')")
    if shutil.which("redis-server") is None:
        unavailable("the redis-server binary is not installed")
    servers: list[RedisServer] = []

    def make(*, password: str | None = None, tls: bool = False, appendonly: bool = False) -> RedisServer:
        if tls and shutil.which("openssl") is None:
            unavailable("openssl is not installed (needed for the TLS test certificate)")
        workdir = tmp_path / f"redis{len(servers)}"
        workdir.mkdir(mode=0o700)
        server = RedisServer(
            workdir, password=password, cert=self_signed_cert(workdir) if tls else None, appendonly=appendonly
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A started private redis-server without persistence, stopped after the test."""
    return redis_server_factory()
