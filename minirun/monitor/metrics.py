"""The daemon's Prometheus endpoint: `minirun daemon --metrics 127.0.0.1:9323`.

  GET /metrics   <- 200, text/plain; version=0.0.4 (the exposition format cAdvisor serves)
  anything else  <- 404 (another path) or 405 (another method); one request a connection

Where the address comes from, first found: `--metrics ADDR`, MINIRUN_METRICS=ADDR, the key
"metrics-addr" of <root>/daemon.json (docker's daemon.json key; read by every daemon that
starts on this root, so a daemon started on demand by `run -d` or brought back by the
keeper serves metrics too). No address: no endpoint, and prometheus_client is never
imported. ADDR is HOST:PORT, [IPV6]:PORT for IPv6.

Served from the daemon's own epoll loop, not from a thread. The daemon forks without
exec: a foreground run's engine.prepare with --userns forks the image store's user
namespace helpers (image/store.py: the child unshares CLONE_NEWUSER or joins a user
namespace, Python code after fork), and health checks run exec from it (execproc forks);
a fork of a multithreaded process inherits any lock another thread held at that moment,
and cgroups' fork into the cgroup (clone3 CLONE_INTO_CGROUP, 5-25 ms less per exec) is
only taken single-threaded (cgroups/base.py). The daemon is also one thread by design:
requests, exits and restarts each run to their end (daemon/server.py). A scrape is one
short request answered at once: the loop is busy for its length (bench/README.md:
~150 ms for 50 containers on a loaded 2-cpu VM) and serves the rest after it. A client
that connects and sends nothing holds a connection, not the loop (at most
MAX_CONNECTIONS are kept: a new one closes the oldest).

Everything is read at scrape time (no background sampling): the running containers'
cgroups (minirun/monitor/cgstats.py), their netns's net/dev, the records, and the events
after the last scrape for the start counters.

Metrics, with cAdvisor's names, types, units and labels:
  container_cpu_usage_seconds_total          counter  cpu="total" (cAdvisor's label
                                                      when per-cpu usage is off)
  container_memory_usage_bytes               gauge
  container_memory_working_set_bytes         gauge    usage less inactive file pages
  container_spec_memory_limit_bytes          gauge    0 when unlimited, as cAdvisor
  container_network_receive_bytes_total      counter  interface (lo left out, as cAdvisor;
  container_network_transmit_bytes_total     counter  none for a host-network container)
  container_fs_reads_bytes_total             counter  device ("/dev/vda", as cAdvisor
  container_fs_writes_bytes_total            counter  names it; "MAJ:MIN" when unknown)
  container_processes                        gauge    pids.current
  container_oom_events_total                 counter  the cgroup's OOM kills
  container_start_time_seconds               gauge    unix time of the last start
with labels id (the cgroup path relative to the hierarchy's root, e.g. /minirun/<id>: what
cAdvisor calls id), name (the container's name), image (the image reference it was run
with), and pod, namespace, container for CRI containers (from the pod's record and the
CRI metadata name; container="POD" for a pod's pid-namespace holder), empty otherwise.
No container_label_* series: cAdvisor's kubelet endpoint drops them too.

minirun's own:
  minirun_containers{state}                      gauge    records by status
  minirun_container_starts_total                 counter  starts since this daemon began
  minirun_container_start_duration_seconds       histogram  created -> started of each
                                                 container's first start (the record's
                                                 creation to its started event)
  minirun_daemon_restarts_total                  counter  daemons started on this run root
                                                 after the first (run_root/daemon.starts)
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3

from ..errors import InvalidArgument, MiniRunError

CONFIG_FILE = "daemon.json"
CONFIG_KEY = "metrics-addr"
ENV = "MINIRUN_METRICS"
STARTS_FILE = "daemon.starts"
# the text format cAdvisor serves and every Prometheus reads (prometheus_client >= 0.22
# calls its CONTENT_TYPE_LATEST 1.0.0, which Prometheus 2 does not know; the names here
# need none of 1.0.0's escaping, so the body is the same)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CONNECTIONS = 16
MAX_REQUEST = 8192
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STATES = ("created", "running", "paused", "exited")
CONTAINER_LABELS = ("id", "name", "image", "pod", "namespace", "container")
# (key, type, name without _total, cAdvisor's help text, labels besides CONTAINER_LABELS)
CONTAINER_FAMILIES = (
    ("cpu", "counter", "container_cpu_usage_seconds",
     "Cumulative cpu time consumed in seconds.", ("cpu",)),
    ("usage", "gauge", "container_memory_usage_bytes",
     ("Current memory usage in bytes, including all memory regardless of when it was "
      "accessed"), ()),
    ("ws", "gauge", "container_memory_working_set_bytes", "Current working set in bytes.", ()),
    ("limit", "gauge", "container_spec_memory_limit_bytes",
     "Memory limit for the container.", ()),
    ("rx", "counter", "container_network_receive_bytes", "Cumulative count of bytes received",
     ("interface",)),
    ("tx", "counter", "container_network_transmit_bytes",
     "Cumulative count of bytes transmitted", ("interface",)),
    ("reads", "counter", "container_fs_reads_bytes", "Cumulative count of bytes read",
     ("device",)),
    ("writes", "counter", "container_fs_writes_bytes", "Cumulative count of bytes written",
     ("device",)),
    ("procs", "gauge", "container_processes",
     "Number of processes running inside the container.", ()),
    ("oom", "counter", "container_oom_events",
     "Count of out of memory events observed for the container", ()),
    ("start", "gauge", "container_start_time_seconds",
     "Start time of the container since unix epoch in seconds.", ()),
)


# --- configuration -------------------------------------------------------------------------

def configured_address(flag: str | None, root: str) -> str | None:
    """The address to serve on: the flag (or MINIRUN_METRICS, which click maps onto it),
    else daemon.json's metrics-addr; None for no endpoint. A daemon.json that cannot be
    read as JSON is an error, not a silent "no metrics"."""
    if flag:
        return flag
    path = os.path.join(root, CONFIG_FILE)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{path}: {e}") from None
    addr = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if addr is not None and not isinstance(addr, str):
        raise InvalidArgument(f"{path}: {CONFIG_KEY} must be a string like 127.0.0.1:9323")
    return addr or None


def parse_address(addr: str) -> tuple[int, str, int]:
    """(address family, host, port) of HOST:PORT or [IPV6]:PORT."""
    bad = f"--metrics {addr!r}: not HOST:PORT (e.g. 127.0.0.1:9323 or [::1]:9323)"
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(bad)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    except socket.gaierror:
        raise InvalidArgument(bad + ": the host must be an IP address") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[0], int(port)


def bind(addr: str) -> socket.socket:
    """The listening socket, non-blocking; one line naming the problem if it cannot be."""
    family, host, port = parse_address(addr)
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise MiniRunError(f"--metrics {addr}: cannot listen: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def count_daemon_start(run_root: str) -> int:
    """One more daemon start on this run root; how many there were in all. Kept in a
    file of the run root: it outlives daemons (as the keeper does), not reboots."""
    path = os.path.join(run_root, STARTS_FILE)
    try:
        with open(path) as f:
            starts = int(f.read().strip() or 0)
    except (OSError, ValueError):
        starts = 0
    starts += 1
    with open(path + ".tmp", "w") as f:
        f.write(f"{starts}\n")
    os.replace(path + ".tmp", path)
    return starts


def daemon_restarts(run_root: str) -> int:
    try:
        with open(os.path.join(run_root, STARTS_FILE)) as f:
            return max(0, int(f.read().strip()) - 1)
    except (OSError, ValueError):
        return 0


def check_client_library() -> None:
    """prometheus_client is there (imported here, only when metrics are on)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MiniRunError("--metrics needs the Python package prometheus-client "
                           "(pip install 'minirun[metrics]')") from None


# --- the endpoint --------------------------------------------------------------------------

class MetricsServer:
    """The listening socket and its connections, as keys of the daemon's selector: each
    key's data is ("metrics", handler); the daemon calls handler(fileobj, events)."""

    def __init__(self, engine, sock: socket.socket, sel) -> None:
        from prometheus_client import CollectorRegistry

        self.sock = sock
        self.sel = sel
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = EngineCollector(engine)
        self.registry.register(self.collector)
        self.conns: dict[socket.socket, dict] = {}  # insertion order: oldest first
        sel.register(sock, 1, ("metrics", self.on_accept))

    def on_accept(self, sock, events: int) -> None:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        if len(self.conns) >= MAX_CONNECTIONS:
            self.close(next(iter(self.conns)))
        self.conns[conn] = {"in": b"", "out": b""}
        self.sel.register(conn, 1, ("metrics", self.on_conn))

    def on_conn(self, conn, events: int) -> None:
        import selectors

        state = self.conns.get(conn)
        if state is None:
            return
        if state["out"]:
            self.send(conn, state)
            return
        try:
            data = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        state["in"] += data
        if b"\r\n\r\n" not in state["in"] and b"\n\n" not in state["in"]:
            if len(state["in"]) > MAX_REQUEST:
                state["out"] = response(431, b"request header too large\n")
            else:
                return
        else:
            state["out"] = self.answer(state["in"])
        self.sel.modify(conn, selectors.EVENT_WRITE, ("metrics", self.on_conn))
        self.send(conn, state)

    def answer(self, request: bytes) -> bytes:
        from prometheus_client.exposition import generate_latest

        line = request.split(b"\n", 1)[0].decode("latin-1").split()
        method, target = (line + ["", ""])[:2]
        path = target.split("?", 1)[0]
        if path != "/metrics":
            return response(404, b"not found: the metrics are at /metrics\n")
        if method not in ("GET", "HEAD"):
            return response(405, b"method not allowed\n")
        try:
            body = generate_latest(self.registry)
        except Exception as e:  # noqa: BLE001 - a scrape error must not stop the daemon
            return response(500, f"collecting the metrics failed: {e}\n".encode())
        return response(200, body, CONTENT_TYPE, head=method == "HEAD")

    def send(self, conn, state: dict) -> None:
        try:
            sent = conn.send(state["out"])
        except BlockingIOError:
            return
        except OSError:
            self.close(conn)
            return
        state["out"] = state["out"][sent:]
        if not state["out"]:
            self.close(conn)

    def close(self, conn) -> None:
        self.conns.pop(conn, None)
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()


def response(code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             head: bool = False) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
              431: "Request Header Fields Too Large", 500: "Internal Server Error"}[code]
    header = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return header if head else header + body


# --- the collector -------------------------------------------------------------------------

class EngineCollector:
    """prometheus_client's custom collector protocol: collect() yields metric families,
    read when a scrape asks."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.host_netns = os.stat("/proc/self/ns/net").st_ino
        self.devices: dict[tuple[int, int], str] = {}
        # the start counters count from now: the events after the newest one there is
        row = engine.db.execute("SELECT MAX(seq) FROM events").fetchone()
        self.seq = row[0] or 0
        self.starts = 0
        self.bucket_counts = [0] * (len(START_BUCKETS) + 1)
        self.duration_sum = 0.0

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        fams = {key: (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                    name, help_text, labels=[*CONTAINER_LABELS, *extra])
                for key, kind, name, help_text, extra in CONTAINER_FAMILIES}
        rows = self.engine.db.execute(
            "SELECT id, name, image, status, started, pid, options FROM containers").fetchall()
        pods = self._pods()
        states = dict.fromkeys(STATES, 0)
        for cid, name, image, status, started, pid, options in rows:
            if status in ("running", "paused"):  # a frozen cgroup is there to read too
                # a paused container's record still says running (Engine._reconcile)
                if self._container(fams, cid, name, image, started, pid, json.loads(options),
                                   pods):
                    status = "paused"
            elif status == "creating":  # as ps shows it (dockerview.state_of)
                status = "created"
            states[status] = states.get(status, 0) + 1
        yield from fams.values()

        containers = GaugeMetricFamily("minirun_containers", "Containers by state.",
                                       labels=["state"])
        for state, n in states.items():
            containers.add_metric([state], n)
        yield containers
        self._read_starts()
        starts = CounterMetricFamily("minirun_container_starts",
                                     "Containers started since the daemon began.")
        starts.add_metric([], self.starts)
        yield starts
        cumulative, buckets = 0, []
        for le, n in zip((*map(str, START_BUCKETS), "+Inf"), self.bucket_counts):
            cumulative += n
            buckets.append((le, cumulative))
        hist = HistogramMetricFamily("minirun_container_start_duration_seconds",
                                     "Time from a container's creation to its first start.")
        hist.add_metric([], buckets, sum_value=self.duration_sum)
        yield hist
        restarts = CounterMetricFamily("minirun_daemon_restarts",
                                       "Daemons started on this run root after the first.")
        restarts.add_metric([], daemon_restarts(self.engine.run_root))
        yield restarts

    def _container(self, fams, cid, name, image, started, pid, opts, pods) -> bool:
        """Its series added to fams; whether it is frozen (paused)."""
        from ..container import Container
        from .cgstats import cgroup_sample

        try:
            cg = Container.load(self.engine.oci_root, cid).cgroup()
        except MiniRunError:
            return False
        sample = cgroup_sample(cg)
        if sample is None:
            return False
        pod_id = opts.get("pod") or opts.get("holder_of") or ""
        pod_name, namespace = pods.get(pod_id, ("", ""))
        ctr_name = ""
        if pod_name:
            ctr_name = "POD" if opts.get("holder_of") else cri_container_name(name)
        values = [cg.path, name, image, pod_name, namespace, ctr_name]
        fams["cpu"].add_metric(values + ["total"], sample["cpu_ns"] / 1e9)
        fams["usage"].add_metric(values, sample["usage"])
        fams["ws"].add_metric(values, sample["working_set"])
        fams["limit"].add_metric(values, sample["limit"] or 0)
        fams["procs"].add_metric(values, sample["pids"])
        try:
            oom = cg.oom_kill_count()
        except (OSError, ValueError, MiniRunError):
            oom = 0
        fams["oom"].add_metric(values, oom)
        if started:
            fams["start"].add_metric(values, started)
        for dev, (read, written) in sorted(sample["blkio_devices"].items()):
            fams["reads"].add_metric(values + [self._device(dev)], read)
            fams["writes"].add_metric(values + [self._device(dev)], written)
        for iface, counts in sorted(self._net_dev(pid).items()):
            fams["rx"].add_metric(values + [iface], counts["rx_bytes"])
            fams["tx"].add_metric(values + [iface], counts["tx_bytes"])
        try:
            return cg.is_frozen()
        except (OSError, MiniRunError):
            return False

    def _net_dev(self, pid: int | None) -> dict:
        """The interfaces of the container's own netns but lo; none on the host's."""
        from .cgstats import read_net_dev

        path = f"/proc/{pid}/ns/net"
        try:
            if not pid or os.stat(path).st_ino == self.host_netns:
                return {}
        except OSError:
            return {}
        return {k: v for k, v in (read_net_dev(path) or {}).items() if k != "lo"}

    def _device(self, dev: tuple[int, int]) -> str:
        """/dev/<name> of a block device, as cAdvisor labels it."""
        name = self.devices.get(dev)
        if name is None:
            name = f"{dev[0]}:{dev[1]}"
            try:
                with open(f"/sys/dev/block/{name}/uevent") as f:
                    for line in f:
                        if line.startswith("DEVNAME="):
                            name = "/dev/" + line.strip().split("=", 1)[1]
            except OSError:
                pass
            self.devices[dev] = name
        return name

    def _pods(self) -> dict[str, tuple[str, str]]:
        try:
            rows = self.engine.db.execute("SELECT id, name, namespace FROM pods").fetchall()
        except sqlite3.OperationalError:  # no pod ever made here: no table
            return {}
        return {pod_id: (name, namespace) for pod_id, name, namespace in rows}

    def _read_starts(self) -> None:
        """The started events since the last scrape: the counter, and for each first start
        (the container's event before it is its created event) the histogram."""
        db = self.engine.db
        rows = db.execute(
            "SELECT e.seq, e.time_ns, e.container, c.created FROM events e"
            " LEFT JOIN containers c ON c.id = e.container"
            " WHERE e.seq > ? AND e.type = 'started'"
            " AND (e.attrs IS NULL OR e.attrs NOT LIKE '%\"sandbox\"%') ORDER BY e.seq",
            (self.seq,)).fetchall()
        for seq, time_ns, cid, created in rows:
            self.seq = seq
            self.starts += 1
            before = db.execute(
                "SELECT type, time_ns FROM events WHERE container = ? AND seq < ?"
                " AND type IN ('created', 'started') ORDER BY seq DESC LIMIT 1",
                (cid, seq)).fetchone()
            if before is None or before[0] != "created":
                continue  # a restart, or its creation is older than the events kept
            if created is None:  # removed since (run --rm): its created event
                created = before[1] / 1e9
            self._observe(max(0.0, time_ns / 1e9 - created))

    def _observe(self, seconds: float) -> None:
        i = 0
        while i < len(START_BUCKETS) and seconds > START_BUCKETS[i]:
            i += 1
        self.bucket_counts[i] += 1
        self.duration_sum += seconds


def cri_container_name(name: str) -> str:
    """The CRI metadata name in an engine name k8s_<name>_<pod>_<namespace>_<uid>_<attempt>
    (minirun/cri/convert.py container_name; not imported: the daemon needs none of the CRI)."""
    parts = name.split("_")
    return parts[1] if len(parts) == 6 and parts[0] == "k8s" else ""
