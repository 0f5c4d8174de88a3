"""A local Apache Kafka broker: fetched from Maven Central, formatted for KRaft, run on loopback.

Used by ``mqcast broker``, ``mqcast demo`` and the integration tests. The jars are resolved once with
Maven into a cache outside the repository; each broker gets a single-node combined
broker/controller with its own log directory, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stream.config import add_env_argument, port_number
from stream.errors import BrokerError

#: The one Apache Kafka version the project runs (keep in step with deploy/kafka/pom.xml).
KAFKA_VERSION = "4.3.1"
_POM = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "pom.xml"
_READY_MARKER = ".complete"


def default_cache_dir() -> Path:
    """``$MQCAST_CACHE`` or ``~/.cache/mqcast``."""
    return Path(os.environ.get("MQCAST_CACHE", Path.home() / ".cache" / "mqcast"))


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker's jars and data live, and how it listens."""

    kafka_version: str = KAFKA_VERSION
    cache_dir: Path = field(default_factory=default_cache_dir)
    data_dir: Path | None = None  # None: a fresh temporary directory, removed on stop
    port: int = 0  # 0: any free loopback port
    controller_port: int = 0
    heap: str = "512m"
    start_timeout_s: float = 90.0

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"{tool} is not installed; {hint}")
    return path


def ensure_kafka_jars(cfg: BrokerConfig) -> Path:
    """Resolve Kafka and its runtime dependencies into the cache (once); returns the jar folder."""
    libs = cfg.libs_dir
    if (libs / _READY_MARKER).exists():
        return libs
    mvn = _require("mvn", "install Maven (e.g. apt-get install maven) to fetch Apache Kafka")
    if not _POM.exists():
        raise BrokerError(f"{_POM} is missing: it names the Kafka artifacts to fetch")
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(_POM),
        f"-Dmaven.repo.local={cfg.cache_dir / 'm2'}",
        f"-Dkafka.version={cfg.kafka_version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise BrokerError(f"could not fetch Apache Kafka {cfg.kafka_version} with Maven:\n{tail}")
    # Only a complete download is moved into place, so an interrupted one is simply redone.
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (libs / _READY_MARKER).write_text(cfg.kafka_version)
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_properties(node_port: int, controller_port: int, log_dir: Path) -> str:
    """The server.properties of a single-node combined broker/controller on loopback."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{node_port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={log_dir}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            # One node: every internal topic has a single replica.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Tests and demos join groups constantly; waiting for more members only slows them.
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=168",
            "log.cleaner.backoff.ms=1000",
            "num.network.threads=2",
            "num.io.threads=2",
            "",
        ]
    )


_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""


class LocalBroker:
    """One single-node KRaft broker process that this object started and will stop."""

    def __init__(self, cfg: BrokerConfig | None = None) -> None:
        self.cfg = cfg or BrokerConfig()
        self._own_dir = self.cfg.data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="mqcast-kafka-")) if self._own_dir else Path(self.cfg.data_dir)
        )
        self.port = self.cfg.port or free_port()
        self.controller_port = self.cfg.controller_port or free_port()
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _java(self) -> str:
        home = os.environ.get("JAVA_HOME")
        if home and (Path(home) / "bin" / "java").exists():
            return str(Path(home) / "bin" / "java")
        return _require("java", "install Java 17+ (e.g. apt-get install openjdk-17-jre-headless)")

    def _prepare(self, libs: Path) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(server_properties(self.port, self.controller_port, self.data_dir / "logs"))
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.data_dir / "kafka-server.log", level="INFO")
        )
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            cmd = [
                self._java(),
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                # Joined to its flag: a random id starts with "-" one time in 64, and on its own
                # the tool would read it as an option and refuse to format.
                f"--cluster-id={cluster_id}",
                "-c",
                str(props),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise BrokerError(
                    f"formatting the KRaft log dir failed:\n{(proc.stdout + proc.stderr)[-2000:]}"
                )
        return props

    def start(self) -> str:
        """Start the broker and wait until it answers; returns its bootstrap address."""
        if self._proc is not None and self._proc.poll() is None:
            return self.bootstrap
        libs = ensure_kafka_jars(self.cfg)
        props = self._prepare(libs)
        self._log_file = self.log_path.open("ab")
        cmd = [
            self._java(),
            f"-Xmx{self.cfg.heap}",
            f"-Xms{self.cfg.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(props),
        ]
        # Own process group, so stopping it never touches anything else.
        self._proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()
        return self.bootstrap

    def _tail(self) -> str:
        out = []
        for f in (self.log_path, self.data_dir / "kafka-server.log"):
            if f.exists():
                out.append(f.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def _wait_ready(self) -> None:
        from kafka.admin import KafkaAdminClient

        deadline = time.monotonic() + self.cfg.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise BrokerError(f"the Kafka broker exited while starting:\n{self._tail()}")
            # Knock on the port first: a client pointed at a closed port logs a connection error per try.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
            except OSError as exc:
                last_error = exc
                time.sleep(0.25)
                continue
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception as exc:  # not up yet: any client error means "try again"
                last_error = exc
                time.sleep(0.5)
        self.stop()
        waited = f"{self.cfg.start_timeout_s:.0f}s"
        raise BrokerError(f"Kafka did not answer within {waited} ({last_error!r}):\n{self._tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL), and remove its data if it was temporary."""
        self._terminate(timeout_s)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _terminate(self, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with_group = os.getpgid(proc.pid) == proc.pid
            try:
                os.killpg(proc.pid, signal.SIGTERM) if with_group else proc.terminate()
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL) if with_group else proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop and start again on the same ports and log directory (data survives)."""
        self._terminate(20.0)
        if down_s:
            time.sleep(down_s)
        self.start()

    def kill(self) -> None:
        """SIGKILL the broker (a crash, for fault tests); ``start`` brings it back with its data."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mqcast broker``."""
    add_env_argument(
        parser, "--port", "BROKER_PORT", type=port_number, default=9092, help="client port on 127.0.0.1"
    )
    add_env_argument(
        parser,
        "--controller-port",
        "BROKER_CONTROLLER_PORT",
        type=port_number,
        default=9093,
        help="KRaft controller port on 127.0.0.1",
    )
    add_env_argument(
        parser,
        "--data-dir",
        "BROKER_DATA_DIR",
        type=Path,
        default=None,
        help="log directory to keep between runs (unset: a temporary one, deleted on exit)",
    )
    add_env_argument(
        parser,
        "--cache-dir",
        "CACHE",
        type=Path,
        default=str(default_cache_dir()),
        help="where Kafka's jars are cached",
    )
    add_env_argument(parser, "--heap", "BROKER_HEAP", default="512m", help="broker JVM heap")


def run_broker_command(args: argparse.Namespace) -> int:
    """``mqcast broker``: run in the foreground until Ctrl-C or SIGTERM."""
    cfg = BrokerConfig(
        cache_dir=Path(args.cache_dir),
        data_dir=args.data_dir,
        port=args.port,
        controller_port=args.controller_port,
        heap=args.heap,
    )
    broker = LocalBroker(cfg)
    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    print(f"fetching / starting Apache Kafka {cfg.kafka_version} ...", flush=True)
    broker.start()
    print(f"Kafka is up on {broker.bootstrap} (log: {broker.log_path})")
    print(f"export MQCAST_BOOTSTRAP={broker.bootstrap}", flush=True)
    try:
        while not stop["now"]:
            if broker._proc is None or broker._proc.poll() is not None:
                print(f"the broker exited:\n{broker._tail()}")
                return 1
            time.sleep(0.5)
    finally:
        broker.stop()
    return 0
