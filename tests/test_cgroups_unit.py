"""cgroup drivers without root: conversions, validation, path resolution, mountinfo
parsing, and both drivers writing into fixture trees that mimic cgroupfs."""

from __future__ import annotations

import errno
import os

import pytest

from minirun.cgroups import base, resolve_path
from minirun.cgroups import v1 as v1mod
from minirun.cgroups import v2 as v2mod
from minirun.cgroups.convert import (
    blkio_weight_to_io_weight,
    check_resources,
    cpu_max,
    pids_max,
    shares_to_weight,
    swap_to_v2,
    wanted_controllers,
)
from minirun.cgroups.v1 import CgroupV1, Hierarchy, parse_mountinfo
from minirun.cgroups.v2 import CgroupV2
from minirun.errors import InvalidArgument, InvalidSpec, KernelFeatureMissing, MiniRunError

MiB = 1024 * 1024


def read(path) -> str:
    with open(path) as f:
        return f.read()


def put(path, text: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def recorded_writes(monkeypatch):
    """Every cgroup file write, in order, as (path, value); the files get written too."""
    writes: list[tuple[str, str]] = []
    real = base.write_file

    def record(path: str, data: str) -> None:
        writes.append((str(path), data))
        real(path, data)

    for module in (base, v1mod, v2mod):
        monkeypatch.setattr(module, "write_file", record)
    return writes


# Conversions (crun's documented formulas)


@pytest.mark.parametrize(
    "shares, weight",
    [(0, 0), (2, 1), (1024, 39), (262144, 10000), (1, 1), (10**9, 10000)],
)
def test_shares_to_weight(shares, weight):
    assert shares_to_weight(shares) == weight


@pytest.mark.parametrize("blkio, io", [(0, 0), (10, 1), (500, 4950), (1000, 10000)])
def test_blkio_weight_to_io_weight(blkio, io):
    assert blkio_weight_to_io_weight(blkio) == io


@pytest.mark.parametrize(
    "swap, limit, expected",
    [
        (0, 0, 0),  # nothing set
        (0, -1, -1),  # unlimited memory: unlimited swap
        (-1, 64 * MiB, -1),
        (96 * MiB, 64 * MiB, 32 * MiB),
        (64 * MiB, 64 * MiB, 0),  # swap == limit: no swap at all
        (0, 64 * MiB, 0),
    ],
)
def test_swap_to_v2(swap, limit, expected):
    assert swap_to_v2(swap, limit) == expected


@pytest.mark.parametrize("swap, limit", [(64 * MiB, 0), (64 * MiB, -1), (32 * MiB, 64 * MiB)])
def test_swap_to_v2_refuses_impossible(swap, limit):
    with pytest.raises(InvalidSpec, match="memory.swap"):
        swap_to_v2(swap, limit)


@pytest.mark.parametrize(
    "quota, period, expected",
    [(50000, 100000, "50000 100000"), (-1, 100000, "max 100000"), (20000, 0, "20000"),
     (0, 250000, "max 250000")],
)
def test_cpu_max(quota, period, expected):
    assert cpu_max(quota, period) == expected


@pytest.mark.parametrize("limit, expected", [(-1, "max"), (0, "max"), (1, "1"), (4096, "4096")])
def test_pids_max(limit, expected):
    assert pids_max(limit) == expected


# Validation


@pytest.mark.parametrize(
    "resources, field",
    [
        ({"memory": {"limit": "1g"}}, "memory.limit"),
        ({"memory": {"limit": True}}, "memory.limit"),
        ({"memory": {"limit": -2}}, "memory.limit"),
        ({"memory": {"swappiness": 101}}, "memory.swappiness"),
        ({"memory": {"disableOOMKiller": 1}}, "memory.disableOOMKiller"),
        ({"memory": {"limit": 64 * MiB, "swap": 32 * MiB}}, "memory.swap"),
        ({"memory": {"limt": 1}}, "memory.limt"),
        ({"cpu": {"shares": -1}}, "cpu.shares"),
        ({"cpu": {"quota": -5}}, "cpu.quota"),
        ({"cpu": {"cpus": 0}}, "cpu.cpus"),
        ({"cpu": {"cpus": "0\n1"}}, "cpu.cpus"),
        ({"pids": {"limit": 1.5}}, "pids.limit"),
        ({"blockIO": {"weight": 5}}, "blockIO.weight"),
        ({"blockIO": {"weight": 1001}}, "blockIO.weight"),
        ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
         "blockIO.throttleReadBpsDevice[0].minor"),
        ({"blockIO": {"weightDevice": {"major": 8}}}, "blockIO.weightDevice"),
        ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "hugepageLimits[0].pageSize"),
        ({"hugepageLimits": [{"pageSize": "2MB"}]}, "hugepageLimits[0].limit"),
        ({"unified": {"memory.high": 5}}, "unified.memory.high"),
        ({"devices": [{"access": "rwm"}]}, "devices[0].allow"),
        ({"devices": [{"allow": True, "type": "x"}]}, "devices[0].type"),
        ({"devices": [{"allow": True, "access": "x"}]}, "devices[0].access"),
        ({"devices": [{"allow": True, "major": -3}]}, "devices[0].major"),
        ({"network": {"classID": -1}}, "network.classID"),
        ({"rdma": {"mlx": {"hcaHandles": "2"}}}, "rdma.mlx.hcaHandles"),
        ({"bogus": {}}, "bogus"),
        ([], ""),
    ],
)
def test_check_resources_names_the_bad_field(resources, field):
    with pytest.raises(InvalidSpec) as e:
        check_resources(resources)
    assert f"linux.resources{'.' if field else ''}{field}:" in str(e.value)


def test_check_resources_normalises_devices_and_drops_nulls():
    res = check_resources(
        {
            "memory": {"limit": 64 * MiB, "swap": None},
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3},
            ],
            "network": None,
        }
    )
    assert res == {
        "memory": {"limit": 64 * MiB},
        "devices": [(False, "a", -1, -1, "rwm"), (True, "c", 1, 3, "rwm")],
    }


def test_zero_values_need_no_controller():
    res = check_resources(
        {"memory": {"limit": 0, "swap": 0}, "cpu": {"shares": 0, "cpus": ""},
         "blockIO": {"weight": 0}, "hugepageLimits": []}
    )
    assert wanted_controllers(res) == {}
    res = check_resources({"memory": {"swappiness": 0}, "pids": {"limit": 0},
                           "cpu": {"mems": "0"}, "devices": []})
    assert set(wanted_controllers(res)) == {"memory", "pids", "cpuset", "devices"}


# Path resolution


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, "/minirun/c1"),
        ("", "/minirun/c1"),
        ("/machine/pod1/c1", "/machine/pod1/c1"),
        ("//a//b/", "/a/b"),
        ("pods/c1", "/minirun/pods/c1"),
    ],
)
def test_resolve_path(given, expected):
    assert resolve_path(given, "c1") == expected


@pytest.mark.parametrize("given", ["/a/../b", "..", "system.slice:docker:c1", "/"])
def test_resolve_path_refuses(given):
    with pytest.raises(InvalidArgument):
        resolve_path(given, "c1")


@pytest.mark.parametrize("path", ["/", "relative/x", "/a/../b", "/a/./b"])
def test_drivers_refuse_bad_cgroup_paths(path, tmp_path):
    with pytest.raises(InvalidArgument):
        CgroupV2(path, root=str(tmp_path), own_root=True)
    with pytest.raises(InvalidArgument):
        CgroupV1(path, hierarchies=[Hierarchy(str(tmp_path), ("cpu",), "cpu")])


# mountinfo

MOUNTINFO = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid shared:15 - cgroup cgroup rw,net_cls,net_prio
32 25 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
33 25 0:31 / /sys/fs/cgroup/cpuset rw,nosuid shared:17 - cgroup cgroup rw,cpuset,clone_children
90 80 0:30 /docker/abc /var/lib/x/memory rw,relatime master:16 - cgroup cgroup rw,memory
91 25 0:40 / /sys/fs/cgroup/with\\040space rw shared:20 - cgroup cgroup rw,release_agent=/x,name=odd
"""


def test_parse_mountinfo_finds_co_mounts_and_named_hierarchies():
    hs = parse_mountinfo(MOUNTINFO, "/sys/fs/cgroup")
    assert hs == [
        Hierarchy("/sys/fs/cgroup/systemd", (), "systemd"),
        Hierarchy("/sys/fs/cgroup/cpu,cpuacct", ("cpu", "cpuacct"), "cpu,cpuacct"),
        Hierarchy("/sys/fs/cgroup/net_cls,net_prio", ("net_cls", "net_prio"), "net_cls,net_prio"),
        Hierarchy("/sys/fs/cgroup/memory", ("memory",), "memory"),  # not the bind mount
        Hierarchy("/sys/fs/cgroup/cpuset", ("cpuset",), "cpuset"),
        Hierarchy("/sys/fs/cgroup/with space", (), "odd"),
        # a hybrid host's cgroup2 mount: joined for placement, as runc does
        Hierarchy("/sys/fs/cgroup/unified", (), "unified"),
    ]


def test_parse_mountinfo_ignores_cgroup2_and_other_filesystems():
    text = "26 25 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n1 0 0:1 / / rw - ext4 /dev/vda rw\n"
    assert parse_mountinfo(text, "/sys/fs/cgroup") == []


def test_v1_driver_maps_controllers_to_directories():
    cg = CgroupV1("/minirun/c1", hierarchies=parse_mountinfo(MOUNTINFO, "/sys/fs/cgroup"))
    assert cg.controller_dir("cpuacct") == "/sys/fs/cgroup/cpu,cpuacct/minirun/c1"
    assert cg.controller_dir("net_prio") == "/sys/fs/cgroup/net_cls,net_prio/minirun/c1"
    assert cg.controller_dir("freezer") is None
    assert ("/sys/fs/cgroup/cpu,cpuacct/minirun/c1", "cpu,cpuacct") in cg.mounts_for_container()
    assert ("/sys/fs/cgroup/systemd/minirun/c1", "systemd") in cg.mounts_for_container()


# v1 driver against a fixture tree

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


@pytest.fixture
def v1tree(tmp_path):
    """Hierarchy roots for every controller this VM mounts (cpu and cpuacct apart)."""
    hierarchies = []
    for name in V1_CONTROLLERS:
        (tmp_path / name).mkdir()
        hierarchies.append(Hierarchy(str(tmp_path / name), (name,), name))
    put(tmp_path / "cpuset" / "cpuset.cpus", "0-3\n")
    put(tmp_path / "cpuset" / "cpuset.mems", "0\n")
    return tmp_path, hierarchies


def v1_files(root, path: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        controller, name = rel.split("/")
        put(os.path.join(root, controller) + path + "/" + name, text)


def new_cpuset_levels(root, *levels: str) -> None:
    """What the kernel shows in a new cpuset cgroup: both files, empty."""
    for level in levels:
        put(f"{root}/cpuset{level}/cpuset.cpus")
        put(f"{root}/cpuset{level}/cpuset.mems")


def test_v1_create_copies_cpuset_down_each_level(v1tree):
    root, hierarchies = v1tree
    cg = CgroupV1("/minirun/c1", hierarchies=hierarchies)
    new_cpuset_levels(root, "/minirun", "/minirun/c1")
    cg.create()
    for controller in V1_CONTROLLERS:
        assert (root / controller / "minirun" / "c1").is_dir()
    for level in ("minirun", "minirun/c1"):
        assert read(root / "cpuset" / level / "cpuset.cpus") == "0-3"
        assert read(root / "cpuset" / level / "cpuset.mems") == "0"


def test_v1_memory_raises_memsw_first_and_lowers_limit_first(v1tree, recorded_writes):
    root, hierarchies = v1tree
    cg = CgroupV1("/c1", hierarchies=hierarchies)
    v1_files(root, "/c1", {"memory/memory.limit_in_bytes": "67108864\n",
                           "memory/memory.memsw.limit_in_bytes": "100663296\n",
                           "memory/memory.soft_limit_in_bytes": "",
                           "memory/memory.swappiness": ""})
    cg.apply({"memory": {"limit": 128 * MiB, "swap": 256 * MiB, "reservation": 32 * MiB,
                         "swappiness": 10}})
    names = [os.path.basename(p) for p, _ in recorded_writes]
    assert names == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes",
                     "memory.soft_limit_in_bytes", "memory.swappiness"]
    recorded_writes.clear()
    cg.apply({"memory": {"limit": 32 * MiB, "swap": 48 * MiB}})
    assert recorded_writes == [
        (f"{root}/memory/c1/memory.limit_in_bytes", str(32 * MiB)),
        (f"{root}/memory/c1/memory.memsw.limit_in_bytes", str(48 * MiB)),
    ]


def test_v1_unlimited_memory_unlimits_swap_too(v1tree, recorded_writes):
    root, hierarchies = v1tree
    v1_files(root, "/c1", {"memory/memory.limit_in_bytes": "67108864\n",
                           "memory/memory.memsw.limit_in_bytes": "67108864\n"})
    CgroupV1("/c1", hierarchies=hierarchies).apply({"memory": {"limit": -1}})
    assert [v for _, v in recorded_writes] == ["-1", "-1"]
    assert recorded_writes[0][0].endswith("memory.memsw.limit_in_bytes")


def test_v1_swap_without_swap_accounting_is_a_missing_feature(v1tree):
    root, hierarchies = v1tree
    v1_files(root, "/c1", {"memory/memory.limit_in_bytes": ""})
    with pytest.raises(KernelFeatureMissing, match="memory.swap.*swap accounting"):
        CgroupV1("/c1", hierarchies=hierarchies).apply(
            {"memory": {"limit": 64 * MiB, "swap": 128 * MiB}})


def test_v1_cpu_blkio_pids_files(v1tree):
    root, hierarchies = v1tree
    files = ["cpu/cpu.shares", "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us",
             "cpuset/cpuset.cpus", "cpuset/cpuset.mems", "pids/pids.max",
             "blkio/blkio.bfq.weight", "blkio/blkio.throttle.read_bps_device",
             "blkio/blkio.throttle.write_iops_device"]
    v1_files(root, "/c1", dict.fromkeys(files, ""))
    CgroupV1("/c1", hierarchies=hierarchies).apply({
        "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "1", "mems": "0"},
        "pids": {"limit": -1},
        "blockIO": {"weight": 300,
                    "throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 1048576}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}]},
    })
    got = {f: read(os.path.join(root, f.split("/")[0], "c1", f.split("/")[1])) for f in files}
    assert got == {
        "cpu/cpu.shares": "512", "cpu/cpu.cfs_quota_us": "20000",
        "cpu/cpu.cfs_period_us": "100000", "cpuset/cpuset.cpus": "1",
        "cpuset/cpuset.mems": "0", "pids/pids.max": "max", "blkio/blkio.bfq.weight": "300",
        "blkio/blkio.throttle.read_bps_device": "254:0 1048576",
        "blkio/blkio.throttle.write_iops_device": "8:16 100",
    }


def test_v1_blkio_weight_without_cfq_or_bfq(v1tree):
    root, hierarchies = v1tree
    v1_files(root, "/c1", {"blkio/blkio.throttle.read_bps_device": ""})
    with pytest.raises(KernelFeatureMissing, match="blockIO.weight"):
        CgroupV1("/c1", hierarchies=hierarchies).apply({"blockIO": {"weight": 500}})


def test_v1_devices_deny_all_then_rules_in_order_then_runc_defaults(v1tree, recorded_writes):
    root, hierarchies = v1tree
    v1_files(root, "/c1", {"devices/devices.allow": "", "devices/devices.deny": ""})
    CgroupV1("/c1", hierarchies=hierarchies).apply({"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"},
        {"allow": False, "type": "c", "major": 10, "access": "m"},
    ]})
    lines = [(os.path.basename(p), v) for p, v in recorded_writes]
    assert lines[:4] == [
        ("devices.deny", "a *:* rwm"),
        ("devices.deny", "a *:* rwm"),
        ("devices.allow", "b 7:0 r"),
        ("devices.deny", "c 10:* m"),
    ]
    defaults = {v for f, v in lines[4:] if f == "devices.allow"}
    assert defaults == {"c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm",
                        "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm",
                        "c 136:* rwm"}
    assert len(lines) == 4 + len(defaults)


@pytest.mark.parametrize(
    "resources, match",
    [
        ({"unified": {"memory.high": "1G"}}, "unified: needs cgroup v2"),
        ({"hugepageLimits": [{"pageSize": "2MB", "limit": 2 * MiB}]}, "hugetlb .*not mounted"),
        ({"network": {"classID": 7}}, "network.classID: the net_cls"),
        ({"rdma": {"mlx4_0": {"hcaHandles": 2}}}, "rdma: the rdma"),
    ],
)
def test_v1_refuses_what_the_host_lacks(v1tree, resources, match):
    _root, hierarchies = v1tree
    with pytest.raises(KernelFeatureMissing, match=match):
        CgroupV1("/c1", hierarchies=hierarchies).apply(resources)


def test_v1_write_error_names_file_and_value(v1tree, monkeypatch):
    root, hierarchies = v1tree
    v1_files(root, "/c1", {"pids/pids.max": ""})

    def einval(path, data):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(base, "write_file", einval)
    with pytest.raises(MiniRunError, match=r"cannot write '5' to .*/c1/pids.max: Invalid"):
        CgroupV1("/c1", hierarchies=hierarchies).apply({"pids": {"limit": 5}})


def test_v1_rootless_warns_per_limit_instead_of_failing(v1tree, monkeypatch, capsys):
    root, hierarchies = v1tree
    v1_files(root, "/c1", {"pids/pids.max": "", "memory/memory.limit_in_bytes": ""})

    def eacces(path, data):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(base, "write_file", eacces)
    CgroupV1("/c1", hierarchies=hierarchies, rootless=True).apply(
        {"memory": {"limit": 64 * MiB}, "pids": {"limit": 5}})
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("minirun: warning: cannot apply memory.limit (no cgroup delegation)")
    assert err[1].startswith("minirun: warning: cannot apply pids.limit (no cgroup delegation)")


def test_v1_stats_shape_and_working_set(v1tree):
    root, hierarchies = v1tree
    v1_files(root, "/c1", {
        "cpuacct/cpuacct.usage": "3000\n", "cpuacct/cpuacct.usage_percpu": "1000 2000 \n",
        "cpuacct/cpuacct.usage_sys": "500\n", "cpuacct/cpuacct.usage_user": "2500\n",
        "cpu/cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 999\n",
        "memory/memory.usage_in_bytes": str(50 * MiB), "memory/memory.max_usage_in_bytes": "0",
        "memory/memory.limit_in_bytes": str(64 * MiB), "memory/memory.failcnt": "2",
        "memory/memory.stat": f"cache 1\ntotal_cache {8 * MiB}\ntotal_inactive_file {6 * MiB}\n",
        "pids/pids.current": "3\n", "pids/pids.max": "max\n",
        "blkio/blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 0\nTotal 4096\n",
        "blkio/blkio.throttle.io_serviced_recursive": "8:0 Read 1\nTotal 1\n",
    })
    stats = CgroupV1("/c1", hierarchies=hierarchies).stats()
    assert stats["cpu"] == {
        "usage": {"total": 3000, "percpu": [1000, 2000], "kernel": 500, "user": 2500},
        "throttling": {"periods": 10, "throttled_periods": 4, "throttled_time": 999},
    }
    memory = stats["memory"]
    assert memory["usage"] == {"usage": 50 * MiB, "max": 0, "limit": 64 * MiB, "failcnt": 2}
    assert memory["working_set"] == 44 * MiB
    assert memory["cache"] == 8 * MiB
    assert memory["stats"]["total_inactive_file"] == 6 * MiB
    assert "swap" not in memory  # no memsw files in this tree
    assert stats["pids"] == {"current": 3, "limit": 0}
    assert stats["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Write", "value": 0},
    ]


def test_v1_oom_kill_count(v1tree):
    root, hierarchies = v1tree
    cg = CgroupV1("/c1", hierarchies=hierarchies)
    assert cg.oom_kill_count() == 0  # no cgroup yet
    v1_files(root, "/c1", {"memory/memory.oom_control":
                           "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"})
    assert cg.oom_kill_count() == 3


def test_v1_destroy_removes_deepest_first_and_prunes_empty_parents(v1tree):
    root, hierarchies = v1tree
    cg = CgroupV1("/minirun/c1", hierarchies=hierarchies)
    new_cpuset_levels(root, "/minirun", "/minirun/c1")
    cg.create()
    os.unlink(root / "cpuset" / "minirun" / "c1" / "cpuset.cpus")  # rmdir needs it empty
    os.unlink(root / "cpuset" / "minirun" / "c1" / "cpuset.mems")
    os.makedirs(root / "memory" / "minirun" / "c1" / "sub" / "deeper")
    os.makedirs(root / "pids" / "minirun" / "other-container")
    cg.destroy()
    assert not cg.exists()
    # a parent another container still uses stays; an empty one goes (nothing named
    # minirun is left behind once the last container is deleted)
    assert (root / "pids" / "minirun").is_dir()
    assert not (root / "memory" / "minirun").exists()
    cg.destroy()  # missing is fine


# v2 driver against a fixture tree

V2_FILES = ["memory.max", "memory.low", "memory.swap.max", "cpu.weight", "cpu.max",
            "cpu.max.burst", "pids.max", "io.weight", "io.max", "cpuset.cpus", "cpuset.mems",
            "hugetlb.2MB.max", "memory.high"]


@pytest.fixture
def v2tree(tmp_path):
    """A pure-v2 root delegating memory, cpu, pids and io, like the QEMU guest's, with
    /minirun/c1 below it showing the files the kernel would show once enabled."""
    put(tmp_path / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma\n")
    put(tmp_path / "cgroup.subtree_control", "cpu io memory pids\n")
    put(tmp_path / "minirun" / "cgroup.subtree_control", "")
    for name in V2_FILES:
        put(tmp_path / "minirun" / "c1" / name, "")
    return tmp_path


def test_v2_apply_converts_and_enables_controllers(v2tree, recorded_writes):
    cg = CgroupV2("/minirun/c1", root=str(v2tree), own_root=True)
    cg.apply({
        "memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": 16 * MiB},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000, "cpus": "0"},
        "pids": {"limit": 32},
        "blockIO": {"weight": 500,
                    "throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 1048576}],
                    "throttleWriteIOPSDevice": [{"major": 254, "minor": 0, "rate": 100}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}],
        "unified": {"memory.high": "50M"},
    })
    c1 = v2tree / "minirun" / "c1"
    assert read(c1 / "memory.max") == str(64 * MiB)
    assert read(c1 / "memory.swap.max") == str(32 * MiB)
    assert read(c1 / "memory.low") == str(16 * MiB)
    assert read(c1 / "cpu.weight") == "39"
    assert read(c1 / "cpu.max") == "50000 100000"
    assert read(c1 / "cpu.max.burst") == "1000"
    assert read(c1 / "cpuset.cpus") == "0"
    assert read(c1 / "pids.max") == "32"
    assert read(c1 / "io.weight") == "4950"  # no io.bfq.weight here: iocost's scale
    assert read(c1 / "hugetlb.2MB.max") == str(4 * MiB)
    assert read(c1 / "memory.high") == "50M"
    io_max = [v for p, v in recorded_writes if p.endswith("/io.max")]
    assert io_max == ["254:0 rbps=1048576", "254:0 wiops=100"]
    # cpu, io, memory, pids were enabled at the root already; cpuset and hugetlb were not
    root_writes = [v for p, v in recorded_writes if p == f"{v2tree}/cgroup.subtree_control"]
    assert sorted(root_writes) == ["+cpuset", "+hugetlb"]
    parent_writes = [v for p, v in recorded_writes
                     if p == f"{v2tree}/minirun/cgroup.subtree_control"]
    assert sorted(parent_writes) == ["+cpu", "+cpuset", "+hugetlb", "+io", "+memory", "+pids"]
    assert not any(p.startswith(f"{c1}/cgroup.subtree_control") for p, _ in recorded_writes)


def test_v2_prefers_bfq_weight_on_blkio_scale(v2tree):
    put(v2tree / "minirun" / "c1" / "io.bfq.weight", "")
    CgroupV2("/minirun/c1", root=str(v2tree), own_root=True).apply({"blockIO": {"weight": 500}})
    assert read(v2tree / "minirun" / "c1" / "io.bfq.weight") == "500"


def test_v2_unlimited_values(v2tree):
    CgroupV2("/minirun/c1", root=str(v2tree), own_root=True).apply(
        {"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 100000}, "pids": {"limit": 0}})
    c1 = v2tree / "minirun" / "c1"
    assert read(c1 / "memory.max") == "max"
    assert read(c1 / "memory.swap.max") == "max"
    assert read(c1 / "cpu.max") == "max 100000"
    assert read(c1 / "pids.max") == "max"


def test_v2_never_writes_a_hybrid_hosts_root(v2tree, recorded_writes):
    cg = CgroupV2("/minirun/c1", root=str(v2tree), own_root=False)
    cg.apply({"memory": {"limit": 64 * MiB}})  # memory is enabled at the root already
    assert read(v2tree / "minirun" / "c1" / "memory.max") == str(64 * MiB)
    with pytest.raises(KernelFeatureMissing, match="hugetlb controller is not enabled in"):
        cg.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 2 * MiB}]})
    assert not any(p == f"{v2tree}/cgroup.subtree_control" for p, _ in recorded_writes)


def test_v2_controller_missing_from_hierarchy(v2tree):
    put(v2tree / "cgroup.controllers", "cpu pids\n")
    with pytest.raises(KernelFeatureMissing, match="memory.*memory controller is not available"):
        CgroupV2("/minirun/c1", root=str(v2tree), own_root=True).apply(
            {"memory": {"limit": 64 * MiB}})


@pytest.mark.parametrize(
    "resources, match",
    [
        ({"memory": {"kernelTCP": 1 * MiB}}, "memory.kernelTCP"),
        ({"memory": {"swappiness": 60}}, "memory.swappiness"),
        ({"memory": {"disableOOMKiller": True}}, "memory.disableOOMKiller"),
        ({"memory": {"useHierarchy": False}}, "memory.useHierarchy"),
        ({"cpu": {"realtimeRuntime": 950000}}, "cpu.realtimeRuntime"),
        ({"blockIO": {"leafWeight": 500}}, "blockIO.leafWeight"),
        ({"network": {"classID": 1}}, "network"),
        ({"unified": {"io.nope": "1"}}, "unified.io.nope: io.nope does not exist"),
        ({"memory": {"limit": 64 * MiB, "swap": 128 * MiB}}, "memory.swap"),
    ],
)
def test_v2_refuses_what_v2_cannot_do(v2tree, resources, match):
    os.unlink(v2tree / "minirun" / "c1" / "memory.swap.max")  # as with swap accounting off
    with pytest.raises(KernelFeatureMissing, match=match):
        CgroupV2("/minirun/c1", root=str(v2tree), own_root=True).apply(resources)


def test_v2_no_swap_needs_no_swap_file(v2tree):
    os.unlink(v2tree / "minirun" / "c1" / "memory.swap.max")
    CgroupV2("/minirun/c1", root=str(v2tree), own_root=True).apply(
        {"memory": {"limit": 64 * MiB, "swap": 64 * MiB}})
    assert read(v2tree / "minirun" / "c1" / "memory.max") == str(64 * MiB)


@pytest.mark.parametrize("name", ["../cgroup.procs", "a/b", "..", ""])
def test_v2_unified_refuses_path_names(v2tree, name):
    with pytest.raises(InvalidSpec, match="unified"):
        CgroupV2("/minirun/c1", root=str(v2tree), own_root=True).apply({"unified": {name: "1"}})


def test_v2_devices_warn_once_and_do_not_fail(v2tree, capsys):
    CgroupV2("/minirun/c1", root=str(v2tree), own_root=True).apply({"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    ]})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "not enforced on cgroup v2" in err[0]


def test_v2_rootless_warns(v2tree, monkeypatch, capsys):
    def eperm(path, data):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(base, "write_file", eperm)
    put(v2tree / "minirun" / "cgroup.subtree_control", "memory pids\n")
    CgroupV2("/minirun/c1", root=str(v2tree), rootless=True, own_root=True).apply(
        {"memory": {"limit": 64 * MiB}})
    err = capsys.readouterr().err
    assert err.startswith("minirun: warning: cannot apply memory.limit (no cgroup delegation)")


def test_v2_stats_shape_and_working_set(v2tree):
    c1 = v2tree / "minirun" / "c1"
    put(c1 / "cpu.stat", "usage_usec 300\nuser_usec 200\nsystem_usec 100\nnr_periods 5\n"
                         "nr_throttled 2\nthrottled_usec 7\n")
    put(c1 / "memory.current", str(40 * MiB))
    put(c1 / "memory.max", "max\n")
    put(c1 / "memory.peak", str(48 * MiB))
    put(c1 / "memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    put(c1 / "memory.stat", f"anon {30 * MiB}\nfile {10 * MiB}\ninactive_file {4 * MiB}\n")
    put(c1 / "memory.swap.current", str(1 * MiB))
    put(c1 / "memory.swap.max", "max\n")
    put(c1 / "pids.current", "2\n")
    put(c1 / "pids.max", "100\n")
    put(c1 / "io.stat", "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    cg = CgroupV2("/minirun/c1", root=str(v2tree), own_root=True)
    stats = cg.stats()
    assert stats["cpu"] == {
        "usage": {"total": 300_000, "kernel": 100_000, "user": 200_000},
        "throttling": {"periods": 5, "throttled_periods": 2, "throttled_time": 7000},
    }
    memory = stats["memory"]
    assert memory["usage"] == {"usage": 40 * MiB, "max": 48 * MiB, "limit": 2**64 - 1,
                               "failcnt": 3}
    assert memory["working_set"] == 36 * MiB
    assert memory["stats"]["anon"] == 30 * MiB
    assert memory["swap"]["usage"] == 41 * MiB  # memory+swap, as v1 reports it
    assert stats["pids"] == {"current": 2, "limit": 100}
    assert {"major": 254, "minor": 0, "op": "Write", "value": 8192} in \
        stats["blkio"]["ioServiceBytesRecursive"]
    assert cg.oom_kill_count() == 1


def test_v2_stats_leave_out_missing_controllers(v2tree):
    put(v2tree / "minirun" / "c1" / "cpu.stat", "usage_usec 1\nuser_usec 1\nsystem_usec 0\n")
    for name in V2_FILES:
        os.unlink(v2tree / "minirun" / "c1" / name)
    cg = CgroupV2("/minirun/c1", root=str(v2tree), own_root=True)
    assert cg.stats() == {"cpu": {"usage": {"total": 1000, "kernel": 0, "user": 1000}}}
    assert cg.oom_kill_count() == 0


def test_v2_create_passes_down_what_the_root_delegates_without_writing_it(
    tmp_path, recorded_writes
):
    put(tmp_path / "cgroup.controllers", "cpuset cpu io memory hugetlb pids\n")
    put(tmp_path / "cgroup.subtree_control", "cpu memory pids\n")
    put(tmp_path / "minirun" / "cgroup.controllers", "cpu memory pids\n")
    put(tmp_path / "minirun" / "cgroup.subtree_control", "memory\n")
    CgroupV2("/minirun/c1", root=str(tmp_path), own_root=True).create()
    assert recorded_writes == [
        (f"{tmp_path}/minirun/cgroup.subtree_control", "+cpu"),
        (f"{tmp_path}/minirun/cgroup.subtree_control", "+pids"),
    ]


def test_v2_create_destroy_and_mounts(tmp_path):
    cg = CgroupV2("/minirun/a/c1", root=str(tmp_path), own_root=True)
    cg.create()
    assert cg.exists()
    assert cg.mounts_for_container() == [(str(tmp_path / "minirun" / "a" / "c1"), "")]
    os.mkdir(tmp_path / "minirun" / "a" / "c1" / "nested")
    cg.destroy()
    assert not cg.exists()
    # the levels it made under minirun's parent are pruned once empty
    assert not (tmp_path / "minirun").exists()
    cg.destroy()


def test_pids_of_a_cgroup_removed_while_read_are_none(tmp_path, monkeypatch):
    """A cgroup rmdir'ed between the open of cgroup.procs and its read gives ENODEV (the
    daemon deleting an exited container while a stop kills it): nothing is left in it."""
    put(str(tmp_path / "cg" / "cgroup.procs"), "12\n")
    real_open = open

    def dying(path, *args, **kw):
        if str(path).endswith("cgroup.procs"):
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr("builtins.open", dying)
    assert base.Cgroup._pids_below(str(tmp_path / "cg")) == []
    monkeypatch.setattr("builtins.open", real_open)
    assert base.Cgroup._pids_below(str(tmp_path / "cg")) == [12]
