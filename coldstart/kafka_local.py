"""A real single-node Apache Kafka broker on this machine, driven through ``deploy/kafka/kafka.sh``.

The script does the work (Maven fetch of the official jars, KRaft storage format, background JVM); this
module gives it a typed face for the CLI, the demo and the test fixtures, and turns its failures into
:class:`~coldstart.errors.KafkaUnavailable` carrying the broker log's last lines.

>>> LocalKafka(version="4.0.0", port=19092, data_dir=Path("var/kafka")).bootstrap
'127.0.0.1:19092'
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from coldstart.errors import KafkaUnavailable

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "kafka.sh"

# A cold start may first fetch ~45 MB of jars with Maven; a warm one takes 5-15 s on two cores.
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0
STATUS_STOPPED = 3  # kafka.sh's exit status for "not running"


@dataclass(frozen=True)
class LocalKafka:
    """One broker: its Kafka version, its client port on 127.0.0.1 and the directory holding its data,
    ``server.properties``, ``broker.pid`` and ``broker.log``."""

    version: str = "4.0.0"
    port: int = 9092
    data_dir: Path = Path("var/kafka")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "broker.log"

    def start(self, ready_timeout: float = 30.0) -> str:
        """Start the broker (or find it running) and return its bootstrap servers once it serves metadata."""
        self._run("start", START_TIMEOUT_S)
        wait_for_broker(self.bootstrap, ready_timeout)
        return self.bootstrap

    def stop(self) -> None:
        """Stop the broker; harmless when it is not running."""
        self._run("stop", STOP_TIMEOUT_S)

    def status(self) -> bool:
        """True when this directory's broker process is alive."""
        done = self._run("status", 30.0, ok=(0, STATUS_STOPPED))
        return done.returncode == 0

    def fetch(self) -> Path:
        """Resolve this version's jars into the shared cache (once per machine); return the libs folder."""
        return Path(self._run("fetch", START_TIMEOUT_S).stdout.strip().splitlines()[-1])

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _run(self, command: str, timeout: float, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        argv = ["bash", str(SCRIPT), command, "--version", self.version, "--port", str(self.port),
                "--dir", str(self.data_dir)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        except subprocess.TimeoutExpired as exc:
            raise KafkaUnavailable(
                f"`kafka.sh {command}` for Kafka {self.version} took longer than {timeout:.0f}s.\n"
                f"Broker log ({self.log_path}):\n{self.log_tail()}"
            ) from exc
        except OSError as exc:
            raise KafkaUnavailable(f"cannot run {SCRIPT}: {exc}") from exc
        if done.returncode not in ok:
            raise KafkaUnavailable(
                f"`kafka.sh {command}` for Kafka {self.version} on port {self.port} failed "
                f"(exit {done.returncode}):\n{done.stderr.strip() or done.stdout.strip()}\n"
                "Needs Java 17+ and Maven on PATH (Debian: apt-get install openjdk-17-jre-headless maven) "
                "and Maven Central reachable for the first fetch."
            )
        return done


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_broker(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until a broker at ``bootstrap`` answers a real metadata request (DescribeCluster) naming at
    least one broker; raise :class:`KafkaUnavailable` after ``timeout`` seconds."""
    from kafka import KafkaAdminClient  # imported here: the rest of this module needs no Kafka client
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin = None
        try:
            remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="coldstart-wait",
                                     request_timeout_ms=min(remaining_ms, 10_000))
            if admin.describe_cluster().get("brokers"):
                return
        except (KafkaError, OSError, ValueError) as exc:
            last = exc
        finally:
            if admin is not None:
                admin.close()
        time.sleep(0.2)
    raise KafkaUnavailable(
        f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s ({last!r}). "
        "Start one with `coldstart kafka start` or point COLDSTART_BOOTSTRAP_SERVERS at yours."
    ) from last
