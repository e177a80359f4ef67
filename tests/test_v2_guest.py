"""Runs the tests marked cgroup_v2 inside the QEMU guest with a pure cgroup v2 hierarchy.

This VM mounts cgroup v1, so the v2 driver's controllers can only be exercised in a guest
(tests/v2guest/). The guest boots once for all of them; its junit report is counted here
and shown in the terminal summary, so a run that tested nothing cannot look like a pass.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from v2guest.guest import GuestError, GuestRun, boot, run_in_guest

CHECKOUT = Path(__file__).resolve().parents[1]
# TCG runs the guest 10 to 50 times slower than the host.
GUEST_TIMEOUT = float(os.environ.get("MINIRUN_V2GUEST_TIMEOUT", "1200"))


def _python() -> str:
    venv_python = CHECKOUT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def _junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0))
    return total


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.fixture
def results_dir():
    # Not under pytest's own tmp tree: the guest's pytest manages that tree too, and this
    # directory is writable from the guest.
    path = tempfile.mkdtemp(prefix="minirun-v2results-")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_guest_runs_a_command_on_a_pure_v2_host_and_reports_its_exit_status(tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("from the host\n")
    script = (
        'cat "$MARKER"; echo "$GREETING" >&2; pwd; '
        "grep -c ' - cgroup ' /proc/self/mountinfo; "
        "grep ' /sys/fs/cgroup ' /proc/self/mountinfo | grep -o ' - cgroup2 '; exit 7"
    )
    code, output = run_in_guest(
        ["sh", "-c", script],
        cwd=str(tmp_path),
        env={"MARKER": str(marker), "GREETING": "hello from the guest"},
        timeout=GUEST_TIMEOUT,
    )
    assert code == 7
    # The cwd is shared even under /tmp, which the guest covers with its own tmpfs.
    assert output.splitlines() == [
        "from the host",
        "hello from the guest",
        str(tmp_path),
        "0",
        " - cgroup2 ",
    ]


def test_a_wedged_guest_is_killed_and_reported(results_dir: Path):
    with pytest.raises(GuestError, match="timed out after 2s") as excinfo:
        boot(["sleep", "600"], cwd=str(CHECKOUT), env={}, timeout=2, shared_dir=str(results_dir))
    assert "--- console" in str(excinfo.value)
    assert _processes_mentioning(str(results_dir)) == []


def _boot_suite(junit: Path, results_dir: Path) -> GuestRun:
    return boot(
        [
            _python(),
            "-m",
            "pytest",
            "-m",
            "cgroup_v2",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-q",
        ],
        cwd=str(CHECKOUT),
        env={
            "MINIRUN_IN_V2_GUEST": "1",
            "MINIRUN_CGROUP_ROOT": "/sys/fs/cgroup",
            "MINIRUN_CGROUP_DRIVER": "v2",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        timeout=GUEST_TIMEOUT,
        shared_dir=str(results_dir),
    )


def test_cgroup_v2_suite_in_guest(results_dir: Path, v2_guest_summary):
    junit = results_dir / "v2.xml"
    try:
        run = _boot_suite(junit, results_dir)
    except GuestError as e:
        v2_guest_summary(f"cgroup v2 guest: no result ({str(e).splitlines()[0]})")
        raise
    tail = "\n".join(run.output.splitlines()[-60:])
    if not junit.exists():
        v2_guest_summary(f"cgroup v2 guest: no result (pytest exited {run.exit_code})")
        pytest.fail(f"the guest wrote no junit report (exit {run.exit_code}):\n{tail}")

    counts = _junit_counts(junit)
    failed = counts["failures"] + counts["errors"]
    passed = counts["tests"] - failed - counts["skipped"]
    line = (
        f"cgroup v2 guest: {passed} passed, {failed} failed, {counts['skipped']} skipped "
        f"(kernel {run.kernel_release}, {run.seconds:.0f}s)"
    )
    print(line)
    v2_guest_summary(line)

    assert counts["tests"] >= 1, f"no test marked cgroup_v2 ran in the guest:\n{tail}"
    assert failed == 0, f"cgroup v2 tests failed in the guest:\n{tail}"
    assert counts["skipped"] == 0, f"cgroup v2 tests were skipped in the guest:\n{tail}"
    assert run.exit_code == 0, f"pytest in the guest exited {run.exit_code}:\n{tail}"
