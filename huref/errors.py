"""One exception family for every failure a user can meet.

The CLI turns any ``HurefError`` into one line on stderr and exit code 2 (bad input or usage),
and an ``OSError`` (disk full, permissions) into one line and exit code 3; tracebacks are shown
only with ``--debug``.
"""

from __future__ import annotations


class HurefError(Exception):
    """Base of every user-facing huref error."""

    exit_code: int = 2


class UsageError(HurefError):
    """The command line or the arguments of an API call do not make sense."""


class CheckpointError(HurefError):
    """A checkpoint cannot be read: missing, truncated, corrupt or inconsistent files."""


class UnsafeFileError(CheckpointError):
    """A file would execute code if loaded the usual way (pickle payloads); it is refused."""


class ArchitectureError(HurefError):
    """A checkpoint does not match any known architecture, or contradicts its declaration."""


class FingerprintError(HurefError):
    """A fingerprint file is corrupt, tampered with, from another version, or incompatible."""


class RegistryError(HurefError):
    """The registry of known bases cannot do what was asked."""


class RenderError(HurefError):
    """A dog image cannot be rendered (bad generator checkpoint, bad vector)."""


class FPVecError(HurefError):
    """Fingerprint-vector training, extraction, stamping or verification failed on its input."""


class ReportError(HurefError):
    """An audit report cannot be produced from the given evidence."""
