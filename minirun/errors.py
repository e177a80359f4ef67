"""One exception hierarchy for all of minirun.

Each error carries a one-line, lower-case message that names the problem. The CLIs turn
them into an exit code and a line on stderr; the CRI server into a gRPC status.
"""


class MiniRunError(Exception):
    """Base of every error minirun raises on purpose."""

    exit_code = 1


class NotFound(MiniRunError):
    """A container, image or file that was asked for does not exist."""


class AlreadyExists(MiniRunError):
    """An id or name that must be unique is taken."""


class InvalidSpec(MiniRunError):
    """config.json (or another input document) is malformed or asks for the unsupported."""


class InvalidArgument(MiniRunError):
    """A bad id, name, signal or flag value."""


class ContainerStateError(MiniRunError):
    """The operation does not fit the container's current state."""


class Unsupported(MiniRunError):
    """A well-formed request for something minirun does not implement (the CRI answers
    UNIMPLEMENTED, so a client can tell it from a bad request and skip the feature)."""


class KernelFeatureMissing(MiniRunError):
    """The host kernel lacks something the request needs."""


class HookError(MiniRunError):
    """An OCI hook failed or timed out."""


class ExecutableNotFound(NotFound):
    """The container's program does not exist (docker's exit status 127)."""


class NotExecutable(InvalidSpec):
    """The container's program exists but cannot be executed (docker's exit status 126)."""
