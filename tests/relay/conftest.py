"""Real brokers on this machine: RabbitMQ 5672, NATS (JetStream) 4222, Redis 6379. A test
whose broker is absent skips with the reason; one that restarts a broker starts its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventbus_app.relay import install_relays

URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "nats": "nats://127.0.0.1:4222",
    "redis": "redis://127.0.0.1:6379/0",
}
PORTS = {"rabbitmq": 5672, "nats": 4222, "redis": 6379}
CLIENT = {"rabbitmq": "pika", "nats": "nats", "redis": "redis"}
# A port nothing listens on: "the broker is down".
DOWN = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:1/%2F",
    "nats": "nats://127.0.0.1:1",
    "redis": "redis://127.0.0.1:1/0",
    "http": "http://127.0.0.1:1/eventbus/x/",
}


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def need_broker(backend: str) -> None:
    pytest.importorskip(CLIENT[backend], reason=f"pip install 'eventbus_app[{backend}]'")
    if not listening(PORTS[backend]):
        pytest.skip(f"needs {backend} on 127.0.0.1:{PORTS[backend]}")


def unique_options(backend: str, url: str | None = None) -> dict[str, Any]:
    """Broker names of this test only (exchange, queue, stream, key): runs do not mix."""
    tag = f"{os.environ.get('EVENTBUS_TEST_SUFFIX', 'main')}_{uuid.uuid4().hex[:8]}"
    options: dict[str, Any] = {"BACKEND": backend, "URL": url or URLS[backend], "TIMEOUT": 3}
    if backend == "rabbitmq":
        options.update(EXCHANGE=f"eventbus_test_{tag}", QUEUE=f"eventbus_test_{tag}")
    elif backend == "nats":
        options.update(
            STREAM=f"EVENTBUS_TEST_{tag}".upper(),
            SUBJECT_PREFIX=f"eventbus_test_{tag}",
            DURABLE=f"d_{tag}",
        )
    elif backend == "redis":
        options.update(STREAM=f"eventbus_test_{tag}")
    return options


@pytest.fixture
def relays(settings: Any) -> Callable[..., None]:
    """``relays(relays={...}, sources={...})``: configure and register them for this test."""

    def configure(relays: dict[str, Any] | None = None, sources: dict[str, Any] | None = None):
        settings.EVENTBUS = {
            **settings.EVENTBUS,
            "NUDGE": False,
            "RELAYS": relays or {},
            "SOURCES": sources or {},
        }
        install_relays()

    yield configure
    from eventbus_app.relay.publish import close_all

    close_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnServer:
    """A redis-server or nats-server of this test's own, on a free port, to restart."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"eventbus_{kind}_")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}" + ("/0" if self.kind == "redis" else "")

    def start(self) -> None:
        if self.kind == "redis":
            args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            args += ["--save", "", "--appendonly", "yes", "--dir", self.dir]
        else:
            args = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js"]
            args += ["-sd", self.dir]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start on {self.port}")
            time.sleep(0.05)
        time.sleep(1.0 if self.kind == "nats" else 0.2)  # JetStream needs a moment more

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_server() -> Iterator[Callable[[str], OwnServer]]:
    servers: list[OwnServer] = []

    def start(kind: str) -> OwnServer:
        binary = "redis-server" if kind == "redis" else "nats-server"
        if shutil.which(binary) is None:
            pytest.skip(f"needs {binary} on the PATH")
        pytest.importorskip(CLIENT[kind])
        server = OwnServer(kind)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
