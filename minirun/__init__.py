"""minirun: a small container runtime on Linux primitives."""

__version__ = "0.1.0"
# The newest runtime-spec release whose fields minirun knows (features' ociVersionMax,
# `--version`, `info`): each field is implemented or refused by name, never ignored.
OCI_VERSION = "1.3.0"
