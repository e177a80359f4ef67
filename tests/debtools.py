"""Test-only programs from Debian packages that are never installed (scripts/deb-tool.sh:
downloaded and extracted, so their services do not start on the host)."""

from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def deb_tool(package: str, *files: str) -> str:
    """The path of files[0] extracted from `package` (fetched once; a failure fails the
    test that needs it, with the script's reason)."""
    proc = subprocess.run([os.path.join(REPO, "scripts", "deb-tool.sh"), package, *files],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"cannot get {files[0]} of {package}: {proc.stderr.strip()}")
    return proc.stdout.strip()
