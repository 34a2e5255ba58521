"""The embedded single-node Apache Kafka (KRaft, broker + controller in one JVM).

Runs from the jars of ``kafka/pom.xml`` (checked in, version pinned), fetched once by Maven
into ``<libs root>/<version>/`` (default ``<AWET home>/kafka/libs``) and reused offline
afterwards. Everything else lives under ``<AWET home>/kafka/``:

    server.properties   written at every start (ports may change, settings may change)
    broker.json         ports of the last start and the cluster id (the data stays bound to it)
    data/               log.dirs: topics, offsets, metadata log. Kept by `awet infra down`.

Start: format the storage once (``kafka.tools.StorageTool``), then ``kafka.Kafka`` detached,
with a bounded heap, logging through ``kafka/log4j2.xml`` to ``<home>/logs/broker.log``.
Readiness: a MetadataRequest naming a broker and a controller (``kafka_probe``) or the
caller's AdminClient probe, with a deadline. Stop: SIGTERM (controlled shutdown), SIGKILL
after a timeout.

Static voters (``controller.quorum.voters``) rather than a formatted voter set: the
controller's port may change between starts (taken by another program meanwhile), and a
static voter address is read from the configuration at each start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import psutil

from awet_dagster.infra.processes import InfraError, file_lock, free_port, log_tail

# JVM options of the embedded Kafka and its storage-format run. C1 only: a start costs ~2.5 s
# of CPU instead of ~4 s, an idle minute ~25% less, and a one-node development broker never
# needs C2's peak throughput (200k small messages took the same 6 s).
DEFAULT_JVM_OPTIONS: tuple[str, ...] = ("-XX:TieredStopAtLevel=1",)

FILES_DIR = Path(__file__).with_name("kafka")
POM = FILES_DIR / "pom.xml"
LOG4J2 = FILES_DIR / "log4j2.xml"
MIN_JAVA = 17
_COMPLETE = ".complete"  # marker: every jar of the fetch is in place
_FETCH_TIMEOUT_S = 900.0  # first fetch downloads ~45 MB from Maven Central

# One-node settings (see docs/deploy.md for a real cluster). Replication 1 everywhere:
# with the default 3 the offsets topic is never created on one node and groups never work.
ONE_NODE_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "offsets.topic.replication.factor": "1",
    # 50 partitions by default: the first group join would create all of them.
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "10",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Default 3 s: every first join of a group would wait that long.
    "group.initial.rebalance.delay.ms": "0",
    # Topics come from configs/ with their partitions and retention (`awet infra up`);
    # a producer's typo must fail, not create a topic with broker defaults.
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    # Two cores: fewer threads than the defaults (3 network, 8 I/O).
    "num.network.threads": "2",
    "num.io.threads": "4",
    # Retention acts on closed segments: roll hourly and check each minute so that a
    # topic's retention.ms holds on a development machine's small volumes too.
    "log.roll.ms": "3600000",
    "log.retention.check.interval.ms": "60000",
    "log.segment.bytes": "67108864",
}


@dataclass(frozen=True)
class JavaRuntime:
    path: str
    major: int
    version: str


def _java_candidates() -> list[str]:
    out: list[str] = []
    home = os.environ.get("JAVA_HOME")
    if home:
        out.append(str(Path(home) / "bin" / "java"))
    found = shutil.which("java")
    if found:
        out.append(found)
    return out


def _java_version(java: str) -> tuple[int, str] | None:
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "([^"]+)"', proc.stderr + proc.stdout)
    if not m:
        return None
    text = m.group(1)
    parts = text.split(".")
    major = int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(re.match(r"\d+", parts[0]).group())
    return major, text


def find_java(min_major: int = MIN_JAVA) -> tuple[JavaRuntime | None, str]:
    """The first Java >= ``min_major`` ($JAVA_HOME, then PATH), or None and why not."""
    seen: list[str] = []
    for cand in _java_candidates():
        ver = _java_version(cand)
        if ver is None:
            seen.append(f"{cand} (no version)")
            continue
        if ver[0] >= min_major:
            return JavaRuntime(cand, ver[0], ver[1]), ""
        seen.append(f"{cand} is Java {ver[1]}")
    if not seen:
        return None, f"no Java runtime found (JAVA_HOME unset, no `java` on PATH); Kafka needs Java {min_major}+"
    return None, f"Kafka needs Java {min_major}+: " + "; ".join(seen)


def find_maven() -> str | None:
    home = os.environ.get("MAVEN_HOME") or os.environ.get("M2_HOME")
    if home and (Path(home) / "bin" / "mvn").exists():
        return str(Path(home) / "bin" / "mvn")
    return shutil.which("mvn")


def pinned_version(pom: Path = POM) -> str:
    """``kafka.version`` of the checked-in pom."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ElementTree.parse(pom).getroot()
    el = root.find("m:properties/m:kafka.version", ns)
    if el is None or not (el.text or "").strip():
        raise InfraError(f"{pom} has no <kafka.version> property")
    return el.text.strip()


def libs_dir(libs_root: Path, version: str | None = None) -> Path:
    return libs_root / (version or pinned_version())


def jars_cached(libs: Path) -> bool:
    return (libs / _COMPLETE).exists()


def fetch_jars(libs: Path, *, mvn: str | None = None, timeout_s: float = _FETCH_TIMEOUT_S,
               progress: Callable[[str], None] | None = None) -> Path:
    """Copy the pom's runtime jars into ``libs`` with Maven (once; later calls reuse them)."""
    if jars_cached(libs):
        return libs
    mvn = mvn or find_maven()
    if mvn is None:
        raise InfraError("Maven (`mvn`) is not on PATH and the Kafka jars are not cached in " f"{libs}")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(libs.parent / ".fetch.lock", timeout_s=timeout_s):
        if jars_cached(libs):  # fetched by a concurrent caller meanwhile
            return libs
        partial = libs.with_name(f"{libs.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        if progress:
            progress(f"fetching Apache Kafka {libs.name} jars with Maven into {libs} (once) ...")
        cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={partial}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            shutil.rmtree(partial, ignore_errors=True)
            raise InfraError(f"Maven did not fetch the Kafka jars within {timeout_s:.0f}s") from None
        version = libs.name
        need = [f"kafka_2.13-{version}.jar", "log4j-core-", "log4j-slf4j-impl-"]
        names = [p.name for p in partial.glob("*.jar")] if partial.exists() else []
        missing = [n for n in need if not any(x.startswith(n) for x in names)]
        if proc.returncode != 0 or missing:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise InfraError(
                f"Maven could not fetch the Kafka {version} jars (exit {proc.returncode}"
                f"{', missing ' + ', '.join(missing) if missing else ''}):\n{tail}"
            )
        (partial / _COMPLETE).write_text("\n".join(sorted(names)) + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
    return libs


def availability(libs: Path, *, fetch: bool = True,
                 progress: Callable[[str], None] | None = None) -> tuple[JavaRuntime | None, str]:
    """(java, "") when Kafka can run now (fetching the jars if needed), else (None, why not)."""
    java, why = find_java()
    if java is None:
        return None, why
    if jars_cached(libs):
        return java, ""
    if find_maven() is None:
        return None, f"the Kafka jars are not cached in {libs} and Maven (`mvn`) is not on PATH"
    if not fetch:
        return java, ""
    try:
        fetch_jars(libs, progress=progress)
    except InfraError as exc:
        return None, str(exc).splitlines()[0]
    return java, ""


# ----------------------------------------------------------------------------- one node
@dataclass(frozen=True)
class KafkaLayout:
    root: Path  # <home>/kafka

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def state(self) -> Path:
        return self.root / "broker.json"


def _read_state(path: Path) -> dict:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return {}


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def choose_ports(lay: KafkaLayout, host: str, port: int | None) -> tuple[int, int]:
    """(client port, controller port): the requested or last-used ones when free, else new."""
    state = _read_state(lay.state)
    client = port or state.get("port")
    if not client or (port is None and not _port_free(host, int(client))):
        client = free_port(host)
    controller = state.get("controller_port")
    if not controller or controller == client or not _port_free(host, int(controller)):
        controller = free_port(host)
        while controller == client:
            controller = free_port(host)
    return int(client), int(controller)


def write_properties(lay: KafkaLayout, host: str, port: int, controller_port: int,
                     extra: Mapping[str, str] | None = None) -> Path:
    props = dict(ONE_NODE_SETTINGS)
    props.update({
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "log.dirs": str(lay.data),
    })
    props.update({k: str(v) for k, v in (extra or {}).items()})
    lay.root.mkdir(parents=True, exist_ok=True)
    text = "# Written by `awet infra up` at every start; edit infra.kafka_settings instead.\n"
    text += "".join(f"{k}={v}\n" for k, v in props.items())
    tmp = lay.properties.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(lay.properties)
    return lay.properties


def classpath(libs: Path) -> str:
    return str(libs / "*")


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A Kafka cluster id: 16 random bytes in URL-safe base64 without padding, never starting
    with "-" (StorageTool's argument parser would read "-t -abc..." as a missing value and an
    option: 1 start in 64 failed so; Kafka's own Uuid.randomUuid() redraws the same way)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def format_storage(java: JavaRuntime, libs: Path, lay: KafkaLayout, *, timeout_s: float = 120.0,
                   jvm_options: tuple[str, ...] = ()) -> str:
    """Format ``data/`` once with a cluster id kept in broker.json; returns the cluster id."""
    state = _read_state(lay.state)
    cluster_id = state.get("cluster_id")
    if (lay.data / "meta.properties").exists() and cluster_id:
        return cluster_id
    if (lay.data / "meta.properties").exists():
        m = re.search(r"cluster\.id=(\S+)", (lay.data / "meta.properties").read_text())
        if m:
            return m.group(1)
    cluster_id = new_cluster_id()
    cmd = [java.path, "-Xmx256m", *jvm_options, f"-Dlog4j2.configurationFile={LOG4J2}", "-cp", classpath(libs),
           "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(lay.properties),
           "--ignore-formatted"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise InfraError(f"formatting the Kafka storage in {lay.data} took more than {timeout_s:.0f}s") from None
    if proc.returncode != 0:
        raise InfraError(f"formatting the Kafka storage in {lay.data} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return cluster_id


def save_state(lay: KafkaLayout, **values: object) -> None:
    state = _read_state(lay.state)
    state.update(values)
    tmp = lay.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(lay.state)


def broker_command(java: JavaRuntime, libs: Path, lay: KafkaLayout, *, heap_mb: int, logs_dir: Path,
                   jvm_options: tuple[str, ...] = ()) -> list[str]:
    return [
        java.path,
        f"-Xms{min(128, heap_mb)}m", f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        *jvm_options,
        # Die on OOM instead of limping; no hsperfdata files to leave behind.
        "-XX:+ExitOnOutOfMemoryError", "-XX:+PerfDisableSharedMem",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J2}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp", classpath(libs),
        "kafka.Kafka", str(lay.properties),
    ]


def stray_processes(lay: KafkaLayout) -> list[psutil.Process]:
    """JVMs running this home's server.properties (found even without a pid file)."""
    target = str(lay.properties)
    out: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info.get("cmdline") or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "kafka.Kafka" in cmd and target in cmd:
            out.append(proc)
    return out


def startup_error(log_path: Path) -> str:
    return log_tail(log_path, lines=30)
