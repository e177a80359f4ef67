"""`docker stats`' document from a real cgroup v2 container, in the QEMU guest (pure v2:
tests/test_v2_guest.py runs the tests marked cgroup_v2 there)."""

from __future__ import annotations

import time

import pytest
from ocitest import base_config, needs_root, oci, rootfs  # noqa: F401

MiB = 1024 * 1024


@needs_root
@pytest.mark.cgroup_v2
def test_v2_stats_document_and_columns(oci, rootfs):  # noqa: F811
    from minirun.cgroups import open_cgroup
    from minirun.monitor import stats
    from minirun.monitor.cgstats import cgroup_sample

    cfg = base_config(["sh", "-c", "while :; do :; done"])
    cfg["linux"]["resources"]["memory"] = {"limit": 64 * MiB}
    cfg["linux"]["resources"]["pids"] = {"limit": 50}
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    cg = open_cgroup(f"/minirun/{cid}")
    assert cg.version == 2
    first = stats.stats_document(cgroup_sample(cg), None, "v2box", cid)
    time.sleep(2)
    doc = stats.with_previous(stats.stats_document(cgroup_sample(cg), None, "v2box", cid),
                              first)
    mem = doc["memory_stats"]
    assert mem["limit"] == 64 * MiB and 0 < mem["usage"] < 64 * MiB
    assert "inactive_file" in mem["stats"] and "total_inactive_file" not in mem["stats"]
    assert "percpu_usage" not in doc["cpu_stats"]["cpu_usage"]
    assert doc["pids_stats"] == {"current": 1, "limit": 50}
    assert all(e["op"] in ("read", "write")
               for e in doc["blkio_stats"]["io_service_bytes_recursive"])
    row = stats.format_entry(stats.entry_of(doc), cid)
    assert row["MemUsage"].endswith(" / 64MiB") and row["PIDs"] == "1"
    assert float(row["CPUPerc"].rstrip("%")) > 0  # the busy loop
    assert row["NetIO"] == "0B / 0B"
