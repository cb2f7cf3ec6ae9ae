"""Real brokers on this machine: RabbitMQ 5672, NATS (JetStream) 4222, Redis 6379. A test
whose broker is absent skips with the reason; one that restarts a broker starts its own
(``own_server``: a redis-server, nats-server or RabbitMQ node on free ports)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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
    from eventbus_app.relay.config import uninstall_relays
    from eventbus_app.relay.publish import close_all

    uninstall_relays()  # the next test starts with no relay (settings go back after this)

    close_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# RabbitMQ's scripts as installed by the Debian package; /usr/sbin's wrappers switch to the
# rabbitmq user (and its environment), so the real scripts are run directly.
RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"


def rabbitmq_script(name: str) -> str | None:
    path = os.path.join(RABBITMQ_BIN, name)
    return path if os.access(path, os.X_OK) else shutil.which(name)


class OwnServer:
    """A broker of this test's own, on free ports, to stop and start again: redis-server,
    nats-server (JetStream), or a RabbitMQ node (its own node name, ports, epmd, data and
    log directories; the machine's node on 5672 is never touched).

    ``stop()`` / ``start()`` take the broker down and up with its data kept (a RabbitMQ
    node: ``rabbitmqctl stop_app`` / ``start_app``); ``close()`` ends it for good."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"eventbus_{kind}_")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0  # seconds the last start took (a RabbitMQ node's boot is slow)
        if kind == "rabbitmq":
            self.node = f"eventbus_{self.port}@localhost"
            self.dist_port = free_port()
            self.epmd_port = free_port()  # its own epmd too: nothing shared to clean up

    @property
    def url(self) -> str:
        if self.kind == "rabbitmq":
            return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        return f"{self.kind}://127.0.0.1:{self.port}" + ("/0" if self.kind == "redis" else "")

    def start(self) -> None:
        began = time.monotonic()
        if self.kind == "rabbitmq":
            self._start_rabbitmq()
        else:
            self._start_process()
        self.started_in = time.monotonic() - began

    def _start_process(self) -> None:
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

    def rabbitmq_env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "HOME": d,  # the Erlang cookie the node and rabbitmqctl share
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": f"{d}/rabbitmq-env.conf",  # not /etc/rabbitmq's
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",  # none: no 15672
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_PID_FILE": f"{d}/node.pid",
        }

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> str:
        ctl = rabbitmq_script("rabbitmqctl")
        assert ctl is not None
        done = subprocess.run(
            [ctl, "-n", self.node, *args],
            env=self.rabbitmq_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def _start_rabbitmq(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.rabbitmqctl("start_app")  # the node runs; its app was stopped
            return
        with open(f"{self.dir}/rabbitmq-env.conf", "w") as f:
            f.write("")
        with open(f"{self.dir}/rabbitmq.conf", "w") as f:
            f.write(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        with open(f"{self.dir}/enabled_plugins", "w") as f:
            f.write("[].\n")
        server = rabbitmq_script("rabbitmq-server")
        assert server is not None
        with open(f"{self.dir}/server.out", "wb") as out:
            self.proc = subprocess.Popen(
                [server],
                env=self.rabbitmq_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its shell, erl and epmd: one group to end
            )
        deadline = time.monotonic() + 120
        while True:  # await_startup fails at once while the node is not registered yet
            try:
                self.rabbitmqctl("await_startup", "--timeout", "60", timeout=90)
                return
            except RuntimeError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.kind == "rabbitmq":
            if self.proc is not None:
                self.rabbitmqctl("stop_app")
        elif self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        """Stop it for good (a RabbitMQ node: ``rabbitmqctl stop``, its epmd too)."""
        if self.kind != "rabbitmq":
            self.stop()
            return
        if self.proc is None:
            return
        try:
            self.rabbitmqctl("stop", timeout=60)
            self.proc.wait(30)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # killed below
        # epmd (started by the node, on its own port) outlives the node: end the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if os.access(epmd, os.X_OK):
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env=self.rabbitmq_env(),
                capture_output=True,
                timeout=10,
            )
        self.proc.wait(10)
        self.proc = None


BINARIES = {"redis": "redis-server", "nats": "nats-server", "rabbitmq": "rabbitmq-server"}


@pytest.fixture
def own_server() -> Iterator[Callable[[str], OwnServer]]:
    servers: list[OwnServer] = []

    def start(kind: str) -> OwnServer:
        binary = BINARIES[kind]
        found = rabbitmq_script(binary) if kind == "rabbitmq" else shutil.which(binary)
        if found is None:
            pytest.skip(f"needs {binary} on the PATH")
        pytest.importorskip(CLIENT[kind])
        server = OwnServer(kind)
        servers.append(server)  # before start(): a half-started node is ended too
        server.start()
        return server

    yield start
    for server in servers:
        try:
            server.close()
        finally:
            shutil.rmtree(server.dir, ignore_errors=True)
