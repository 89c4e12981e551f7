"""Fingerprint files in the registry: ``fingerprints/<sha256>.safetensors``, named by their bytes.

A file is written to a temporary name and renamed before the row that names it is committed (a
row never points at a missing or partial file), checked against its name every time it is read,
and rewritten by ``put_blob`` whenever its bytes are not the ones its name promises: a damaged or
swapped file is refused with the base it belongs to and the command that repairs it, never read
as that base's evidence. Which rows keep a file from deletion: ``huref.registry.schema.blob_named``.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from huref.errors import FingerprintError
from huref.registry.db import OS_REFUSED_EXIT, StoreError
from huref.registry.records import Base

if TYPE_CHECKING:  # fingerprints are tensors: loaded (with torch) only when a command needs one
    from huref.invariants.fingerprint import Fingerprint


class BlobError(StoreError):
    """A stored fingerprint file is missing, unreadable, damaged, or not the file its name promises."""

    def __init__(self, path: Path, why: str, exit_code: int = 2) -> None:
        super().__init__(f"{path}: {why}", exit_code)
        self.path, self.why = path, why


def repair_hint(b: Base) -> str:
    """The commands that fix an unusable base: re-add it from its source, or remove it."""
    src = "SOURCE"
    for prefix in ("fingerprint file ", "checkpoint "):
        if b.source.startswith(prefix) and Path(b.source[len(prefix) :]).exists():
            src = shlex.quote(b.source[len(prefix) :])
    name = shlex.quote(b.name)
    return f"'huref registry add {src} --name {name} --replace' or 'huref registry remove {name}'"


def unusable(bad: list[tuple[Base, BlobError]], purpose: str) -> StoreError:
    """One line naming every unusable base, with ``purpose`` and the commands that fix it."""
    code = OS_REFUSED_EXIT if all(err.exit_code == OS_REFUSED_EXIT for _, err in bad) else 2
    if len(bad) == 1:
        one, err = bad[0]
        return StoreError(
            f"registered base {one.name!r} is unusable: {err}; {purpose}fix: {repair_hint(one)}", code
        )
    listed = "; ".join(f"{x.name!r} ({err})" for x, err in bad)
    return StoreError(
        f"{len(bad)} registered bases are unusable: {listed}; {purpose}fix each with "
        "'huref registry add SOURCE --name NAME --replace' or 'huref registry remove NAME'",
        code,
    )


class BlobFiles:
    """The fingerprint files of a registry (``Store`` is one): stored, checked, loaded."""

    blob_dir: Path

    def blob_path(self, sha: str) -> Path:
        return self.blob_dir / f"{sha}.safetensors"

    def blob_intact(self, sha: str) -> bool:
        """Whether the file stored under ``sha`` exists and its bytes hash to ``sha``."""
        try:
            return hashlib.sha256(self.blob_path(sha).read_bytes()).hexdigest() == sha
        except OSError:
            return False

    def put_blob(self, data: bytes) -> str:
        """Store fingerprint-file bytes under their SHA-256 (atomically); returns the hash.

        A file already there is kept only when its bytes are these: a damaged or swapped one of
        any size is replaced (by rename, so a reader sees the old file or the new, never a mix)."""
        from huref.checkpoint.atomic import atomic_file

        sha = hashlib.sha256(data).hexdigest()
        dest = self.blob_path(sha)
        if not self.blob_intact(sha):
            try:
                with atomic_file(dest) as tmp, open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise StoreError(
                    f"{dest}: cannot write the fingerprint file ({e.strerror or e})", OS_REFUSED_EXIT
                ) from None
        return sha

    def load_blob(self, sha: str) -> Fingerprint:
        """The fingerprint stored under ``sha``: its bytes must hash to ``sha`` and its seal verify.

        The hash check costs one SHA-256 of a file of a few MB; without it a file swapped for
        another sealed fingerprint would be read as the evidence of the base that names it."""
        from huref.invariants.fpfile import load_fingerprint

        path = self.blob_path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(path, "fingerprint file missing") from None
        except OSError as e:
            raise BlobError(
                path, f"cannot read the fingerprint file ({e.strerror or e})", OS_REFUSED_EXIT
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise BlobError(
                path,
                f"fingerprint file damaged or replaced (its SHA-256 is {actual[:12]}..., "
                f"not the {sha[:12]}... it is stored under)",
            )
        try:
            return load_fingerprint(path)
        except FingerprintError as e:
            why = str(e)
            raise BlobError(path, why.removeprefix(f"{path}: ")) from None

    def load_base(self, b: Base, purpose: str = "") -> Fingerprint:
        """A registered base's fingerprint; an unusable file is one line naming the base and the fix."""
        return self.load_bases([b], purpose)[b.name]

    def load_bases(self, bases: Iterable[Base], purpose: str = "") -> dict[str, Fingerprint]:
        """name -> fingerprint of every base; every unusable one is named in one line, with
        ``purpose`` (why the command stops, ending in '; ') and the commands that fix it."""
        out: dict[str, Fingerprint] = {}
        by_sha: dict[str, Fingerprint] = {}
        bad: list[tuple[Base, BlobError]] = []
        for b in bases:
            try:
                if b.fingerprint not in by_sha:
                    by_sha[b.fingerprint] = self.load_blob(b.fingerprint)
                out[b.name] = by_sha[b.fingerprint]
            except BlobError as e:
                bad.append((b, e))
        if bad:
            raise unusable(bad, purpose)
        return out

    def check_blob_sizes(self, bases: Iterable[Base], sizes: dict[str, int], purpose: str = "") -> None:
        """Every base's fingerprint file is present with the size recorded with its sketch (a stat
        per base, no read): a missing or truncated file stops a command before any work."""
        bad: list[tuple[Base, BlobError]] = []
        for b in bases:
            path = self.blob_path(b.fingerprint)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                bad.append((b, BlobError(path, "fingerprint file missing")))
                continue
            except OSError as e:
                bad.append(
                    (
                        b,
                        BlobError(
                            path, f"cannot read the fingerprint file ({e.strerror or e})", OS_REFUSED_EXIT
                        ),
                    )
                )
                continue
            want = sizes.get(b.fingerprint)
            if want is not None and size != want:
                bad.append(
                    (b, BlobError(path, f"fingerprint file damaged or replaced ({size} bytes, not {want})"))
                )
        if bad:
            raise unusable(bad, purpose)
