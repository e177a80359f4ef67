"""minirun: a small container runtime on Linux primitives."""

__version__ = "0.1.0"
OCI_VERSION = "1.0.2"
