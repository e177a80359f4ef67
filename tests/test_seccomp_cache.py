"""The engine's cache of compiled seccomp profiles: the same program as a fresh compile,
and anything unreadable in it is ignored, never trusted."""

import json
import os

import pytest

from minirun import seccomp
from minirun.engine import DEFAULT_CAPS, SECCOMP_PROFILE, docker_profile_to_oci

pytestmark = pytest.mark.skipif(not os.path.exists(SECCOMP_PROFILE),
                                reason="containers-common's seccomp.json is not installed")


@pytest.fixture
def profile():
    with open(SECCOMP_PROFILE) as f:
        return docker_profile_to_oci(json.load(f), DEFAULT_CAPS)


def test_a_cached_profile_is_the_compiled_one(profile, tmp_path):
    fresh = seccomp.compile_profile(profile)
    first = seccomp.compile_profile(profile, str(tmp_path))
    assert len(os.listdir(tmp_path)) == 1
    cached = seccomp.compile_profile(profile, str(tmp_path))
    for f in (first, cached):
        assert (f.program, f.flags, f.ignored, f.stub_length, f.errnos) == \
            (fresh.program, fresh.flags, fresh.ignored, fresh.stub_length, fresh.errnos)
    other = dict(profile, defaultErrnoRet=1)
    assert seccomp.compile_profile(other, str(tmp_path)).program != fresh.program
    assert len(os.listdir(tmp_path)) == 2


def test_a_damaged_cache_entry_is_compiled_again(profile, tmp_path):
    fresh = seccomp.compile_profile(profile, str(tmp_path))
    (entry,) = os.listdir(tmp_path)
    with open(tmp_path / entry, "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / entry) - 3)  # no longer whole instructions
    again = seccomp.compile_profile(profile, str(tmp_path))
    assert again.program == fresh.program
