"""The open-loop load generator (bench/load.py) against a tiny local HTTP server: no Kafka, no worker."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coldstart.bench.load import open_loop


class Handler(BaseHTTPRequestHandler):
    """200 with a small JSON body; /fail -> 500; /slow -> 200 after 0.2 s. Records each path it saw."""

    seen: list[str] = []
    on_request = None  # called with the number of requests seen so far

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(self.path)
        if type(self).on_request is not None:
            type(self).on_request(len(type(self).seen))
        if self.path == "/slow":
            time.sleep(0.2)
        status = 500 if self.path == "/fail" else 200
        body = b'{"strategy": "personal"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def server():
    Handler.seen, Handler.on_request = [], None
    ThreadingHTTPServer.request_queue_size = 256  # the default backlog of 5 drops a burst's connections
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_schedules_n_requests_at_the_rate_round_robin(server):
    urls = [f"{server}/users/u{k}/recommendations" for k in range(3)]
    t0 = time.perf_counter()
    r = asyncio.run(open_loop(urls, rate=100.0, seconds=0.5,
                              classify=lambda body: body["strategy"]))
    took = time.perf_counter() - t0
    assert r.sent == 50 and r.ok == 50 and r.errors == 0
    assert r.statuses == {"200": 50} and r.classes == {"personal": 50}
    # The schedule spans 49 intervals of 10 ms: neither compressed nor stretched by much.
    assert 0.45 <= took < 2.0
    assert sorted(Handler.seen) == sorted(f"/users/u{i % 3}/recommendations" for i in range(50))
    assert all(s >= v > 0 for s, v in zip(r.scheduled, r.service))


def test_errors_are_counted_and_their_latency_kept(server):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused
    r = asyncio.run(open_loop([f"{server}/ok", f"{server}/fail", f"{dead}/x", f"{server}/ok"],
                              rate=200.0, seconds=0.1, timeout=2.0))
    assert r.sent == 20
    assert r.ok == 10 and r.errors == 10
    assert r.statuses["200"] == 10 and r.statuses["500"] == 5
    assert sum(v for k, v in r.statuses.items() if not k.isdigit()) == 5  # connection refused (aiohttp's ClientConnectorError)
    assert len(r.scheduled) == 20 and all(x > 0 for x in r.scheduled)


def test_a_slow_server_does_not_slow_the_schedule(server):
    # 20 requests at 100/s, each answered after 0.2 s: a closed loop would take 4 s; open loop ~0.4 s.
    t0 = time.perf_counter()
    r = asyncio.run(open_loop([f"{server}/slow"], rate=100.0, seconds=0.2))
    took = time.perf_counter() - t0
    assert r.ok == 20
    assert took < 1.5
    assert min(r.service) >= 0.2


def test_a_stalled_client_shows_in_latency_from_the_scheduled_time(server):
    # When the server has seen the 10th request, the client's event loop blocks for 0.3 s: the requests
    # due meanwhile go out late. From their send time they look fast; from the scheduled time they carry
    # the stall (what a closed-loop or send-time measurement would hide).
    async def run():
        loop = asyncio.get_running_loop()
        Handler.on_request = lambda n: n == 10 and loop.call_soon_threadsafe(time.sleep, 0.3)
        return await open_loop([f"{server}/ok"], rate=100.0, seconds=0.5)

    r = asyncio.run(run())
    assert r.ok == 50
    assert r.dispatch_lag_max_s >= 0.25
    assert r.summary()["max_ms"] >= 250.0
    # The ~30 requests due during the stall waited before their send, not in the server (the one or two
    # in flight when it began carry it in their service time too). Those due in its first 0.25 s waited
    # at least 50 ms (~25 of them); the ones due at its very end waited only a few ms and are not counted.
    waited_to_send = [s for s, v in zip(r.scheduled, r.service) if s - v >= 0.05]
    assert len(waited_to_send) >= 15
    assert sum(v >= 0.25 for v in r.service) <= 3


def test_paced_latency_request_load_asks_every_user_at_the_rate(server):
    # bench stream's "GET while ingesting" row: it once called a helper that a refactor had removed,
    # and only a full benchmark run found out.
    from coldstart.bench.latency import request_load

    r = asyncio.run(request_load([server], ["a", "b"], rate=100.0, duration=0.3))
    assert (r.sent, r.ok) == (30, 30)
    assert sorted(set(Handler.seen)) == ["/users/a/recommendations?k=10", "/users/b/recommendations?k=10"]
    assert 0 < r.p50_s <= r.p99_s < 2.0
