"""Scenario 4: the Redis broker is down while sign-ups arrive through real HTTP requests.

Everything here is real and private to the test: a redis-server on a free port (the shared
Redis on 6379 is never touched), ``runserver`` serving the sign-up view, and a ``qcluster``
using that Redis. Redis is stopped, 500 sign-ups are posted, Redis is started again, and the
cluster delivers everything by itself (the sweep schedule finds what no nudge announced).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.tasks import NUDGE_RETRY_SECONDS, ensure_schedule
from tests.testapp.models import Account

from .conftest import Status, Workers, kill, report, sized, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.subprocess]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, logs: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(logs / f"redis-{time.monotonic_ns()}.log"),
        ],
        start_new_session=True,
        text=True,
    )
    wait_until(lambda: _redis_up(port), 20, f"redis-server on port {port}")
    return proc


def _redis_up(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5).ping())
    except redis.ConnectionError:
        return False


def _http_up(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True  # the server answers (405 for a GET)
    except OSError:
        return False
    return True


def signup(url: str, i: int) -> tuple[int, float]:
    data = urllib.parse.urlencode({"email": f"user{i}@example.com"}).encode()
    started = time.monotonic()
    with urllib.request.urlopen(url, data=data, timeout=30) as response:
        return response.status, time.monotonic() - started


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_signups_during_a_redis_outage_are_stored_and_delivered_later(
    workers: Workers, rel_env: dict[str, str], tmp_path: Path
) -> None:
    signups = sized(500, 500)
    redis_port, http_port = free_port(), free_port()
    env = dict(rel_env, EVENTBUS_TEST_BROKER="redis", EVENTBUS_TEST_REDIS_PORT=str(redis_port))
    env["EVENTBUS_TEST_SETTINGS"] = "{}"  # product defaults (nudges on, 60 s leases)
    ensure_schedule()
    redis = start_redis(redis_port, tmp_path)
    server = workers.start("runserver", f"127.0.0.1:{http_port}", "--noreload", env=env)
    cluster = workers.start("qcluster", env=env)
    url = f"http://127.0.0.1:{http_port}/reliability/signup/"
    wait_until(lambda: _http_up(url), 60, "runserver")
    assert signup(url, -1)[0] == 201  # with Redis up: delivered through the nudge
    wait_until(
        lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == 1, 60, "a first nudge"
    )

    kill(redis)
    outage_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: signup(url, i), range(signups)))
    statuses = {status for status, _ in results}
    slowest = max(seconds for _, seconds in results)
    assert statuses == {201}
    # A dead broker costs a nudge's connection attempt to few requests: after one fails, the
    # process skips nudges for NUDGE_RETRY_SECONDS and then lets a single request probe.
    slow = sum(1 for _, seconds in results if seconds > 1.0)
    outage_so_far = time.monotonic() - outage_started
    assert slow <= 8 + 8 * (outage_so_far / NUDGE_RETRY_SECONDS + 1), (slow, outage_so_far)
    assert Account.objects.count() == signups + 1
    assert OutboxEvent.objects.count() == signups + 1
    time.sleep(2)  # the cluster keeps running without its broker
    assert cluster.poll() is None, workers.output(cluster)[-3000:]
    assert server.poll() is None

    redis = start_redis(redis_port, tmp_path)
    outage = time.monotonic() - outage_started
    recovered = wait_until(
        lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == signups + 1,
        240,
        "the cluster to deliver the sign-ups after Redis came back",
    )
    kill(redis)
    report(
        "broker outage",
        events=signups,
        deliveries=signups,
        faults=f"Redis down for {outage:.0f} s; {signups} sign-ups over HTTP during it",
        lost=Delivery.objects.exclude(status=Status.SUCCEEDED).count(),
        twice_tx=0,
        twice_file=None,
        seconds=round(outage + recovered, 1),
        responses=sorted(statuses),
        slowest_response_s=round(slowest, 2),
        responses_over_1s=slow,
        delivered_after_redis_back_s=round(recovered, 1),
    )
    from .conftest import tally

    assert tally(signups + 1, ["rel.welcome"]).twice_tx == 0
