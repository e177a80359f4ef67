"""Run a command inside a small QEMU guest whose only cgroup hierarchy is cgroup v2.

The host's / is shared read-only over 9p with a tmpfs overlay on top, so the guest sees
the same files (the checkout, its venv, /usr/bin/python3) at the same paths and can write
anywhere without touching the host. The command's working directory is shared again
read-only at its own path (it may sit under /tmp, which the guest covers with a fresh
tmpfs), and one writable share carries the job in and the output and exit status out.
See README.md next to this file.

    python -m tests.v2guest.guest [--timeout S] [--cwd DIR] [-e K=V] -- CMD [ARG...]
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
BUILD_SCRIPT = HERE / "build.sh"
QEMU = "qemu-system-x86_64"
# Where the guest's init copies busybox before switch_root (see init, stage1).
GUEST_BUSYBOX = "/run/v2guest/busybox"
CTL_DIR = ".v2guest"
GUEST_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# quiet: kernel chatter on the emulated serial line slows TCG down (OOM reports above all);
# errors and the init's "v2guest:" lines still reach the console log.
KERNEL_CMDLINE = "console=ttyS0 panic=-1 cgroup_no_v1=all rdinit=/init quiet"
# /dev/kvm on this VM does not run stock kernels, so plain TCG.
QEMU_MACHINE = [
    "-accel",
    "tcg,thread=multi",
    "-cpu",
    "max",
    "-machine",
    "q35",
    "-m",
    "2048",
    "-smp",
    "2",
    "-nographic",
    "-no-reboot",
    "-nic",
    "none",
]
# Gives the io controller a real block device (io.max needs a MAJ:MIN): /dev/vda.
SCRATCH_DISK_BYTES = 64 * 1024 * 1024
TAIL_LINES = 60


class GuestError(RuntimeError):
    """The guest could not be built, or did not report an exit status."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initramfs: Path
    release: str


@dataclass(frozen=True)
class GuestRun:
    exit_code: int
    output: str
    kernel_release: str
    console: str
    seconds: float


def build(timeout: float = 900) -> GuestImage:
    """Build (or reuse) the guest's kernel and initramfs; see build.sh."""
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise GuestError(f"guest build timed out after {timeout:.0f}s") from e
    if proc.returncode != 0:
        raise GuestError(
            f"guest build failed (exit {proc.returncode}):\n{proc.stdout.decode(errors='replace')}"
        )
    return GuestImage(
        kernel=CACHE / "vmlinux",
        initramfs=CACHE / "initramfs.cpio",
        release=(CACHE / "kernel.release").read_text().strip(),
    )


@functools.cache
def _build_once() -> GuestImage:
    # build() is idempotent but asks apt which kernel is current (about a second).
    return build()


def run_in_guest(command: list[str], cwd: str, env: dict, timeout: float) -> tuple[int, str]:
    """Boot the guest, run `command` in `cwd` with `env` (over a minimal base
    environment), return its exit status and combined stdout/stderr."""
    run = boot(command, cwd=cwd, env=env, timeout=timeout)
    return run.exit_code, run.output


def boot(
    command: list[str],
    cwd: str,
    env: dict,
    timeout: float,
    shared_dir: str | None = None,
    image: GuestImage | None = None,
) -> GuestRun:
    """Like run_in_guest, with the details.

    shared_dir: a host directory the guest sees read-write at the same path (for result
    files); by default a temporary one that is removed afterwards. The job's control
    files live in its .v2guest/ subdirectory.
    Raises GuestError, with the tail of the console log, when the guest times out (it is
    killed) or stops without reporting an exit status.
    """
    if not command:
        raise ValueError("empty command")
    if shutil.which(QEMU) is None:
        raise GuestError(f"{QEMU} not found (apt-get install qemu-system-x86)")
    image = image or _build_once()
    cwd = os.path.realpath(cwd)
    if not os.path.isdir(cwd):
        raise ValueError(f"cwd {cwd} is not a directory")
    own_share = shared_dir is None
    share = tempfile.mkdtemp(prefix="minirun-v2guest-") if own_share else shared_dir
    share = os.path.realpath(share)
    host_side = tempfile.mkdtemp(prefix="minirun-v2guest-host-")
    try:
        return _boot(image, command, cwd, env, timeout, share, Path(host_side))
    finally:
        # Neither directory ever holds a mount on the host side.
        shutil.rmtree(host_side, ignore_errors=True)
        if own_share:
            shutil.rmtree(share, ignore_errors=True)


def _boot(
    image: GuestImage,
    command: list[str],
    cwd: str,
    env: dict,
    timeout: float,
    share: str,
    host_side: Path,
) -> GuestRun:
    ctl = Path(share) / CTL_DIR
    shutil.rmtree(ctl, ignore_errors=True)
    ctl.mkdir(parents=True)
    (ctl / "job.env").write_text(f"V2_SHARE={shlex.quote(share)}\nV2_WORK={shlex.quote(cwd)}\n")
    guest_env = {**GUEST_BASE_ENV, **env}
    (ctl / "cmd.sh").write_text(
        f"cd {shlex.quote(cwd)} || exit 125\n"
        + shlex.join(
            ["exec", GUEST_BUSYBOX, "env", "-i"]
            + [f"{k}={v}" for k, v in guest_env.items()]
            + list(command)
        )
        + "\n"
    )
    scratch = host_side / "scratch.img"
    with open(scratch, "wb") as f:
        f.truncate(SCRATCH_DISK_BYTES)
    console_path = host_side / "console.log"

    argv = [
        QEMU,
        *QEMU_MACHINE,
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initramfs),
        "-append",
        KERNEL_CMDLINE,
        "-virtfs",
        _virtfs("/", "hostroot", readonly=True),
        "-virtfs",
        _virtfs(share, "share", readonly=False),
        "-virtfs",
        _virtfs(cwd, "work", readonly=True),
        "-drive",
        f"file={_qemu_escape(str(scratch))},if=virtio,format=raw",
    ]
    start = time.monotonic()
    with open(console_path, "wb") as console:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise GuestError(
                f"guest timed out after {timeout:.0f}s and was killed\n"
                + _report(console_path, ctl)
            ) from None
        finally:
            if proc.poll() is None:
                _kill(proc)
    seconds = time.monotonic() - start

    exit_file = ctl / "exit"
    if not exit_file.exists():
        raise GuestError(
            f"guest stopped without an exit status (qemu exit {proc.returncode})\n"
            + _report(console_path, ctl)
        )
    return GuestRun(
        exit_code=int(exit_file.read_text().strip()),
        output=_read(ctl / "output"),
        kernel_release=_read(ctl / "kernel").strip(),
        console=_read(console_path),
        seconds=seconds,
    )


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def _virtfs(path: str, tag: str, readonly: bool) -> str:
    opts = [
        "local",
        f"path={_qemu_escape(path)}",
        f"mount_tag={tag}",
        "security_model=none",
        "multidevs=remap",
    ]
    if readonly:
        opts.append("readonly=on")
    return ",".join(opts)


def _qemu_escape(value: str) -> str:
    # QEMU option values escape a comma by doubling it.
    return value.replace(",", ",,")


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _report(console_path: Path, ctl: Path) -> str:
    parts = [f"--- console (last {TAIL_LINES} lines) ---", _tail(_read(console_path))]
    output = _read(ctl / "output")
    if output:
        parts += [f"--- command output (last {TAIL_LINES} lines) ---", _tail(output)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.v2guest.guest",
        description="Run a command in the cgroup v2 QEMU guest.",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--cwd", default=os.getcwd(), help="working directory (default: here)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    parser.add_argument("--console", action="store_true", help="print the console log too")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    env = dict(item.split("=", 1) for item in args.env)
    try:
        run = boot(command, cwd=args.cwd, env=env, timeout=args.timeout)
    except GuestError as e:
        print(e, file=sys.stderr)
        return 124
    if args.console:
        sys.stderr.write(run.console)
    sys.stdout.write(run.output)
    print(
        f"[v2guest: kernel {run.kernel_release}, exit {run.exit_code}, {run.seconds:.1f}s]",
        file=sys.stderr,
    )
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
