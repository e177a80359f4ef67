"""`minirun run --security-opt`: docker's forms (KEY=VALUE and the older KEY:VALUE), checked
from inside through /proc/self/status; anything unknown refused in one line with exit 125
and nothing created (a typo such as `no-new-privilege` once ran without no_new_privs)."""

import json
import os

import pytest
from enginetest import engine  # noqa: F401
from ocitest import needs_root

from minirun.engine import SECCOMP_PROFILE
from minirun.spec import UNSUPPORTED

pytestmark = [needs_root, pytest.mark.root]

SECCOMP_WORKS = "linux.seccomp" not in UNSUPPORTED
# a docker-format profile that only refuses mkdir, so its effect is visible inside
MKDIR_DENIED = {"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                              "errnoRet": 1}]}


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("seccomp") / "mkdir-denied.json"
    path.write_text(json.dumps(MKDIR_DENIED))
    return str(path)


def status_inside(engine, *opts: str) -> dict:  # noqa: F811
    proc = engine("run", "--rm", "--network", "none", *opts, "busybox", "sh", "-c",
                  "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; "
                  "mkdir /tmp/d 2>&1 || true")
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(":\t") for line in proc.stdout.splitlines() if ":\t" in line)
    fields["mkdir"] = "denied" if "Operation not permitted" in proc.stdout else "allowed"
    return fields


DEFAULT_SECCOMP = "2" if SECCOMP_WORKS and os.path.exists(SECCOMP_PROFILE) else "0"


@pytest.mark.parametrize("opt, nnp, seccomp", [
    (None, "0", DEFAULT_SECCOMP),
    ("no-new-privileges", "1", DEFAULT_SECCOMP),
    ("no-new-privileges=true", "1", DEFAULT_SECCOMP),
    ("no-new-privileges=false", "0", DEFAULT_SECCOMP),
    ("no-new-privileges:true", "1", DEFAULT_SECCOMP),
    ("no-new-privileges:false", "0", DEFAULT_SECCOMP),
    ("seccomp=unconfined", "0", "0"),
    ("seccomp:unconfined", "0", "0"),  # docker's older form, once silently ignored
    ("apparmor=unconfined", "0", DEFAULT_SECCOMP),
    ("apparmor:unconfined", "0", DEFAULT_SECCOMP),
    ("label=disable", "0", DEFAULT_SECCOMP),
    ("label:disable", "0", DEFAULT_SECCOMP),
])
def test_docker_forms_seen_from_inside(engine, opt, nnp, seccomp):  # noqa: F811
    fields = status_inside(engine, *(["--security-opt", opt] if opt else []))
    assert fields["NoNewPrivs"] == nnp and fields["Seccomp"] == seccomp, fields
    assert fields["mkdir"] == "allowed"


@pytest.mark.skipif(not SECCOMP_WORKS, reason="this host's runtime has no seccomp")
@pytest.mark.parametrize("sep", ["=", ":"])
def test_a_seccomp_profile_file_applies(engine, profile, sep):  # noqa: F811
    fields = status_inside(engine, "--security-opt", f"seccomp{sep}{profile}",
                           "--security-opt", "no-new-privileges")
    assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "1", fields
    assert fields["mkdir"] == "denied"


@pytest.mark.parametrize("opt, message", [
    ("no-new-privilege", "unknown --security-opt 'no-new-privilege': use no-new-privileges"),
    ("bogus", "unknown --security-opt 'bogus'"),
    ("seccomp", "unknown --security-opt 'seccomp'"),
    ("seccomp=", "unknown --security-opt 'seccomp='"),
    ("no-new-privileges=yes", "--security-opt no-new-privileges=yes: want true or false"),
    ("apparmor=docker-default", ("--security-opt apparmor=docker-default: minirun has no "
                                 "AppArmor support; only apparmor=unconfined is accepted")),
    ("label=type:spc_t", ("--security-opt label=type:spc_t: minirun has no SELinux support; "
                          "only label=disable is accepted")),
    ("seccomp=/nonexistent/profile.json", "seccomp profile /nonexistent/profile.json not found"),
])
def test_unknown_forms_are_refused_and_nothing_is_made(engine, opt, message):  # noqa: F811
    proc = engine("run", "--rm", "--name", "refused", "--security-opt", opt, "busybox",
                  "true")
    assert proc.returncode == 125
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"minirun: error: {message}"), proc.stderr
    assert engine("ps", "-a", "-q").stdout == ""
    bundles = os.path.join(engine.root, "containers")
    assert not os.path.isdir(bundles) or os.listdir(bundles) == []
