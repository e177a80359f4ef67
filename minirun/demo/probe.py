"""Tiny static x86-64 programs for the seccomp scenario: busybox has no applet that calls
keyctl(2), userfaultfd(2) and the like, and the demo must not need a compiler on the host.
Each program makes one system call with fixed arguments and exits with the errno it got
(the kernel's, or the seccomp filter's), 0 on success: 1 is EPERM, 38 ENOSYS."""

from __future__ import annotations

import os
import platform
import struct

BASE = 0x400000

# name -> (x86-64 number, three arguments, what the call asks): calls a process may make
# without any capability, so that only a seccomp filter makes them fail with EPERM
CALLS = {
    "keyctl": (250, (0, -3, 0), "keyctl(KEYCTL_GET_KEYRING_ID, session keyring, 0)"),
    "add_key": (248, (0, 0, 0), "add_key(NULL, ...): EFAULT when it reaches the kernel"),
    "userfaultfd": (323, (1, 0, 0), "userfaultfd(UFFD_USER_MODE_ONLY)"),
    "sysfs": (139, (3, 0, 0), "sysfs(3): how many filesystem types"),
    "unshare": (272, (0x10000000, 0, 0), "unshare(CLONE_NEWUSER)"),
}


def _imm(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def program(number: int, args: tuple[int, int, int]) -> bytes:
    code = (b"\xb8" + _imm(number) + b"\xbf" + _imm(args[0]) + b"\xbe" + _imm(args[1])
            + b"\xba" + _imm(args[2])  # mov eax, NR; mov edi/esi/edx, the arguments
            + bytes.fromhex(
                "0f05"        # syscall
                "31ff"        # xor edi, edi        status 0 ...
                "4885c0"      # test rax, rax
                "7904"        # jns +4              ... unless it failed:
                "89c7"        # mov edi, eax
                "f7df"        # neg edi             status = errno
                "b83c000000"  # mov eax, 60         exit
                "0f05"))      # syscall
    ehsize, phsize = 64, 56
    size = ehsize + phsize + len(code)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + ehsize + phsize, ehsize, 0, 0, ehsize, phsize,
        1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    return header + phdr + code


def write_probes(directory: str) -> list[str]:
    """One program per call in CALLS, in directory; [] on a machine that is not x86-64."""
    if platform.machine() not in ("x86_64", "amd64"):
        return []
    for name, (number, args, _) in CALLS.items():
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(program(number, args))
        os.chmod(path, 0o755)
    return list(CALLS)
