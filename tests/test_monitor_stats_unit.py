"""minirun/monitor/stats.py without root: fixture cgroup trees of v1 and v2 read by the
real drivers, fixture /proc files, and the docker CLI's arithmetic and units checked
against values worked out by hand (and docker's own formatter test cases)."""

from __future__ import annotations

import json
import os

import pytest

from minirun.cgroups.v1 import CgroupV1, Hierarchy
from minirun.cgroups.v2 import CgroupV2
from minirun.monitor import cgstats, stats

MiB = 1024 ** 2
CLK_TCK = os.sysconf("SC_CLK_TCK")


def write(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def make_proc(tmp_path, ticks: int, mem_kb: int = 2048000) -> str:
    """/proc/stat (user nice system idle iowait irq softirq steal guest guest_nice) and
    /proc/meminfo; the eighth field (steal) is not counted by dockerd."""
    proc = str(tmp_path / "proc")
    write(f"{proc}/stat", f"cpu  {ticks} 0 0 0 0 0 0 999999 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\n")
    write(f"{proc}/meminfo", f"MemTotal:       {mem_kb} kB\nMemFree:  1 kB\n")
    return proc


def v1_tree(tmp_path, cpu_ns: int, limit: str = str(64 * MiB)) -> CgroupV1:
    root = tmp_path / "v1"
    d = "minirun/c1"
    write(f"{root}/cpu,cpuacct/{d}/cpuacct.usage", f"{cpu_ns}\n")
    write(f"{root}/cpu,cpuacct/{d}/cpuacct.usage_percpu", f"{cpu_ns // 2} {cpu_ns // 2} \n")
    write(f"{root}/cpu,cpuacct/{d}/cpuacct.usage_sys", "1000\n")
    write(f"{root}/cpu,cpuacct/{d}/cpuacct.usage_user", f"{cpu_ns - 1000}\n")
    write(f"{root}/cpu,cpuacct/{d}/cpu.stat", "nr_periods 4\nnr_throttled 1\nthrottled_time 7\n")
    mem = f"{root}/memory/{d}"
    write(f"{mem}/memory.usage_in_bytes", f"{10 * MiB}\n")
    write(f"{mem}/memory.max_usage_in_bytes", f"{12 * MiB}\n")
    write(f"{mem}/memory.limit_in_bytes", limit + "\n")
    write(f"{mem}/memory.failcnt", "3\n")
    write(f"{mem}/memory.stat", f"cache {3 * MiB}\nrss {7 * MiB}\ninactive_file {MiB}\n"
                                f"total_cache {3 * MiB}\ntotal_rss {7 * MiB}\n"
                                f"total_inactive_file {2 * MiB}\n")
    write(f"{root}/pids/{d}/pids.current", "3\n")
    write(f"{root}/pids/{d}/pids.max", "max\n")
    blk = f"{root}/blkio/{d}"
    write(f"{blk}/blkio.throttle.io_service_bytes_recursive",
          "254:0 Read 4096\n254:0 Write 1500000\n254:0 Sync 1500000\n254:0 Async 4096\n"
          "254:0 Discard 0\n254:0 Total 1504096\n7:0 Read 1000\n7:0 Write 0\nTotal 1505096\n")
    write(f"{blk}/blkio.throttle.io_serviced_recursive",
          "254:0 Read 1\n254:0 Write 3\n254:0 Total 4\nTotal 4\n")
    hierarchies = [Hierarchy(f"{root}/cpu,cpuacct", ("cpu", "cpuacct"), "cpu,cpuacct"),
                   Hierarchy(f"{root}/memory", ("memory",), "memory"),
                   Hierarchy(f"{root}/pids", ("pids",), "pids"),
                   Hierarchy(f"{root}/blkio", ("blkio",), "blkio")]
    return CgroupV1("/minirun/c1", root=str(root), hierarchies=hierarchies)


def v2_tree(tmp_path, cpu_ns: int, memory_max: str = "max") -> CgroupV2:
    root = tmp_path / "v2"
    d = f"{root}/minirun/c2"
    write(f"{d}/cpu.stat", f"usage_usec {cpu_ns // 1000}\nuser_usec {cpu_ns // 1000 - 1}\n"
                           "system_usec 1\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")
    write(f"{d}/memory.current", f"{20 * MiB}\n")
    write(f"{d}/memory.max", memory_max + "\n")
    write(f"{d}/memory.peak", f"{30 * MiB}\n")
    write(f"{d}/memory.events", "low 0\nhigh 0\nmax 5\noom 0\noom_kill 0\n")
    write(f"{d}/memory.stat", f"anon {15 * MiB}\nfile {5 * MiB}\ninactive_file {4 * MiB}\n"
                              f"active_file {MiB}\n")
    write(f"{d}/pids.current", "7\n")
    write(f"{d}/pids.max", "100\n")
    write(f"{d}/io.stat", "254:0 rbytes=2000 wbytes=648 rios=2 wios=1 dbytes=0 dios=0\n"
                          "7:0 rbytes=1000 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n")
    return CgroupV2("/minirun/c2", root=str(root), own_root=False)


NET = {"lo": {"rx_bytes": 10 ** 6, "rx_packets": 1, "rx_errors": 0, "rx_dropped": 0,
              "tx_bytes": 10 ** 6, "tx_packets": 1, "tx_errors": 0, "tx_dropped": 0},
       "eth0": {"rx_bytes": 1234, "rx_packets": 9, "rx_errors": 0, "rx_dropped": 0,
                "tx_bytes": 648, "tx_packets": 8, "tx_errors": 0, "tx_dropped": 0}}


def doc_of(cg, proc: str, net=NET, name="web", cid="ab" * 32) -> dict:
    return stats.stats_document(cgstats.cgroup_sample(cg), net, name, cid, proc=proc)


def test_v1_document_has_docker_s_shape(tmp_path):
    doc = doc_of(v1_tree(tmp_path, 2 * 10 ** 9), make_proc(tmp_path, 5000))
    assert list(doc) == ["read", "preread", "pids_stats", "blkio_stats", "num_procs",
                         "storage_stats", "cpu_stats", "precpu_stats", "memory_stats",
                         "name", "id", "networks"]
    assert doc["name"] == "/web" and doc["id"] == "ab" * 32
    assert doc["preread"] == "0001-01-01T00:00:00Z" and doc["read"].endswith("Z")
    assert doc["pids_stats"] == {"current": 3}  # no limit: left out, as dockerd
    cpu = doc["cpu_stats"]
    assert cpu["cpu_usage"] == {"total_usage": 2 * 10 ** 9, "percpu_usage": [10 ** 9, 10 ** 9],
                                "usage_in_kernelmode": 1000,
                                "usage_in_usermode": 2 * 10 ** 9 - 1000}
    assert cpu["system_cpu_usage"] == 5000 * 10 ** 9 // CLK_TCK
    assert cpu["online_cpus"] == os.sysconf("SC_NPROCESSORS_ONLN")
    assert cpu["throttling_data"] == {"periods": 4, "throttled_periods": 1, "throttled_time": 7}
    mem = doc["memory_stats"]
    assert (mem["usage"], mem["max_usage"], mem["failcnt"], mem["limit"]) == \
        (10 * MiB, 12 * MiB, 3, 64 * MiB)
    assert mem["stats"]["total_inactive_file"] == 2 * MiB and mem["stats"]["total_rss"] == 7 * MiB
    blkio = doc["blkio_stats"]["io_service_bytes_recursive"]
    assert {"major": 254, "minor": 0, "op": "Read", "value": 4096} in blkio
    assert {"major": 254, "minor": 0, "op": "Total", "value": 1504096} in blkio
    assert doc["blkio_stats"]["io_queue_recursive"] == []
    assert list(doc["networks"]) == ["eth0"]  # lo is not the container's traffic
    assert doc["networks"]["eth0"]["tx_packets"] == 8
    json.dumps(doc)  # plain JSON, for the Docker API


def test_v2_document_has_docker_s_shape(tmp_path):
    doc = doc_of(v2_tree(tmp_path, 3 * 10 ** 9), make_proc(tmp_path, 5000, mem_kb=2048000))
    cpu = doc["cpu_stats"]["cpu_usage"]
    assert "percpu_usage" not in cpu and cpu["total_usage"] == 3 * 10 ** 9
    mem = doc["memory_stats"]
    assert "max_usage" not in mem and "failcnt" not in mem
    assert mem["usage"] == 20 * MiB and mem["stats"]["inactive_file"] == 4 * MiB
    assert mem["limit"] == 2048000 * 1024  # memory.max "max": the host's memory
    assert doc["pids_stats"] == {"current": 7, "limit": 100}
    ops = {(e["major"], e["op"]): e["value"]
           for e in doc["blkio_stats"]["io_service_bytes_recursive"]}
    assert ops == {(254, "read"): 2000, (254, "write"): 648, (7, "read"): 1000, (7, "write"): 0}
    assert doc["blkio_stats"]["io_queue_recursive"] is None


def test_v1_unlimited_memory_is_the_host_s(tmp_path):
    # what the kernel writes for "no limit" on v1: 2**63 - 1 rounded down to a page
    doc = doc_of(v1_tree(tmp_path, 1, limit="9223372036854771712"),
                 make_proc(tmp_path, 1, mem_kb=1000))
    assert doc["memory_stats"]["limit"] == 1000 * 1024


def test_cli_columns_v1(tmp_path):
    proc = make_proc(tmp_path, 1000)
    first = doc_of(v1_tree(tmp_path, 10 ** 9), proc)
    # a second later: the container used 0.5 s of cpu while the host's counter moved
    # 2 s (two cpus): docker's formula 0.5 / 2 * online_cpus * 100
    proc = make_proc(tmp_path, 1000 + 2 * CLK_TCK)
    second = stats.with_previous(doc_of(v1_tree(tmp_path, 15 * 10 ** 8), proc), first)
    assert second["preread"] == first["read"]
    assert second["precpu_stats"] == first["cpu_stats"]
    entry = stats.entry_of(second)
    cpus = os.sysconf("SC_NPROCESSORS_ONLN")
    assert entry["CPUPercentage"] == pytest.approx(0.5 / 2 * cpus * 100)
    row = stats.format_entry(entry, "web")
    assert row == {
        "BlockIO": "5.1kB / 1.5MB",  # Read 4096 + 1000 on two devices; Sync/Total not summed
        "CPUPerc": f"{0.5 / 2 * cpus * 100:.2f}%",
        "Container": "web",
        "ID": "abababababab",
        "MemPerc": "12.50%",
        "MemUsage": "8MiB / 64MiB",  # usage less total_inactive_file
        "Name": "web",
        "NetIO": "1.23kB / 648B",  # eth0 only
        "PIDs": "3",
    }
    assert list(row) == sorted(row)  # docker's --format json: keys in order


def test_cli_columns_v2(tmp_path):
    doc = doc_of(v2_tree(tmp_path, 10 ** 9, memory_max=str(64 * MiB)), make_proc(tmp_path, 9),
                 net=None)
    row = stats.format_entry(stats.entry_of(doc), "c2", trunc=False)
    assert row["MemUsage"] == "16MiB / 64MiB" and row["MemPerc"] == "25.00%"
    assert row["BlockIO"] == "3kB / 648B"
    assert row["NetIO"] == "0B / 0B"  # no networks key: the host's network
    assert row["ID"] == "ab" * 32 and row["PIDs"] == "7"


def test_no_precpu_is_docker_s_first_stream_frame(tmp_path):
    """dockerd's first streamed document has zero precpu: the CLI's formula then gives
    the container's cpu time over the host's since boot, not 0 (docker's quirk, kept)."""
    doc = doc_of(v1_tree(tmp_path, 10 ** 9), make_proc(tmp_path, 100 * CLK_TCK))
    cpus = os.sysconf("SC_NPROCESSORS_ONLN")
    assert stats.entry_of(doc)["CPUPercentage"] == pytest.approx(1 / 100 * cpus * 100)


def test_gone_and_stopped_containers_are_the_empty_document(tmp_path):
    doc = stats.stats_document(None, None, "old", "cd" * 32)
    assert doc["read"] == "0001-01-01T00:00:00Z" and doc["memory_stats"] == {}
    assert doc["name"] == "/old" and "networks" not in doc
    row = stats.format_entry(stats.entry_of(doc), "old")
    assert (row["CPUPerc"], row["MemUsage"], row["MemPerc"], row["NetIO"], row["BlockIO"],
            row["PIDs"]) == ("0.00%", "0B / 0B", "0.00%", "0B / 0B", "0B / 0B", "0")
    invalid = stats.format_entry(stats.entry_of(doc), "old", invalid=True)
    assert (invalid["CPUPerc"], invalid["MemUsage"], invalid["PIDs"]) == ("--", "-- / --", "--")
    assert stats.format_entry(dict(stats.entry_of(doc), Name=""), "x")["Name"] == "--"


@pytest.mark.parametrize("size,decimal,binary", [
    # docker/go-units' own test values (size_test.go) where they apply
    (0, "0B", "0B"),
    (648, "648B", "648B"),
    (1000, "1kB", "1000B"),
    (1024, "1.02kB", "1KiB"),
    (1234, "1.23kB", "1.205KiB"),
    (1.5 * MiB, "1.57MB", "1.5MiB"),
    (23.4 * 1024 ** 3, "25.1GB", "23.4GiB"),
    (999999, "1e+03kB", "976.6KiB"),
])
def test_docker_units(size, decimal, binary):
    assert stats.decimal_size(size) == decimal
    assert stats.binary_size(size) == binary


def test_net_dev_fields():
    line = "  eth0: 1234 9 1 2 0 0 0 0 648 8 3 4 0 0 0 0"
    rest = line.partition(":")[2]
    assert cgstats.parse_net_dev_fields(rest.split()) == {
        "rx_bytes": 1234, "rx_packets": 9, "rx_errors": 1, "rx_dropped": 2,
        "tx_bytes": 648, "tx_packets": 8, "tx_errors": 3, "tx_dropped": 4}


def test_stream_semantics(tmp_path, monkeypatch):
    """stats_stream as dockerd answers: stream=false primes precpu with a sample taken
    before; stream chains each document to the one before; one-shot has no precpu."""
    proc = make_proc(tmp_path, 1000)
    samples = iter(range(1, 100))

    def fake_sample(engine, rec):
        n = next(samples)
        s = cgstats.cgroup_sample(v1_tree(tmp_path / str(n), n * 10 ** 9))
        s["timestamp"] = n * 10 ** 9
        return s

    monkeypatch.setattr(cgstats, "container_sample", fake_sample)
    monkeypatch.setattr(stats, "container_netns", lambda engine, rec: None)
    monkeypatch.setattr(stats, "system_cpu_ns", lambda proc="/proc": 0)
    rec = {"id": "ef" * 32, "name": "s", "status": "running"}
    (primed,) = stats.stats_stream(None, rec, stream=False, interval=0)
    assert primed["cpu_stats"]["cpu_usage"]["total_usage"] == 2 * 10 ** 9
    assert primed["precpu_stats"]["cpu_usage"]["total_usage"] == 10 ** 9
    assert primed["preread"] == "1970-01-01T00:00:01.000000000Z"
    (one,) = stats.stats_stream(None, rec, stream=False, one_shot=True, interval=0)
    assert one["preread"] == stats.ZERO_TIME and one["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    gen = stats.stats_stream(None, rec, stream=True, interval=0)
    a, b, c = next(gen), next(gen), next(gen)
    assert a["preread"] == stats.ZERO_TIME
    assert b["precpu_stats"] == a["cpu_stats"] and c["preread"] == b["read"]
    stopped = dict(rec, status="exited")
    assert [d["read"] for d in stats.stats_stream(None, stopped)] == [stats.ZERO_TIME]
    assert proc
