"""Suite-wide pytest configuration.

cgroup v2 split: tests marked `cgroup_v2` need a pure cgroup v2 host. On this VM they run
inside the QEMU guest of tests/v2guest/, booted once by test_v2_guest.py, which runs
`pytest -m cgroup_v2` there with MINIRUN_IN_V2_GUEST=1. Outside the guest they are
deselected (not skipped: a skip would read as a pass); inside it everything else is.
"""

from __future__ import annotations

import os

import pytest

# before any test module imports grpc: its fork handlers would restart its threads in
# every child this process forks (minirun/cri/__init__.py says why that breaks them)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

IN_V2_GUEST = os.environ.get("MINIRUN_IN_V2_GUEST") == "1"

_V2_GUEST_SUMMARY = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        wants_v2 = item.get_closest_marker("cgroup_v2") is not None
        (keep if wants_v2 == IN_V2_GUEST else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def v2_guest_summary(request: pytest.FixtureRequest):
    """Call with a line to show it in the terminal summary (how many v2 tests ran)."""
    lines = request.config.stash.setdefault(_V2_GUEST_SUMMARY, [])
    return lines.append


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_V2_GUEST_SUMMARY, [])
    if lines:
        terminalreporter.write_sep("-", "cgroup v2 guest")
        for line in lines:
            terminalreporter.write_line(line)
