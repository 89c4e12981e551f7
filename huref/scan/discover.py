"""Finding the checkpoints under a zoo folder, without reading any weights.

Candidate rules (a candidate is fingerprinted; anything else is ignored silently):
- a **folder** holding ``config.json`` or a weight index (``model.safetensors.index.json``,
  ``pytorch_model.bin.index.json``) is a Hugging Face checkpoint; it is a leaf: nothing below it
  is searched. A snapshot folder of the Hugging Face cache (``models--ORG--NAME/snapshots/REV``)
  is one too, named ``ORG/NAME`` (``ORG/NAME@REV`` when the cache holds several revisions);
  ``blobs/`` folders are not searched (the snapshot's links point into them);
- a **``.gguf`` file**;
- a **llama2.c ``.bin`` file** (its 28-byte header holds sane dimensions);
- a loose **``.safetensors`` file** whose metadata carries its config (``huref.config``).
Folders with only tokenizer or data files (``_tokenizer``, ``_data`` in the tiny zoo), fingerprint
files and other files are not candidates. Hidden entries (``.git``, temporary files) are skipped.

Bad input is reported, never fatal: a symlink loop (a link that resolves to itself, or a folder
link back to one of its own ancestors), a dangling symlink, a folder that cannot be listed, a
model file that cannot be read, or a FIFO, device or socket named like a weight file (never
opened: reading one blocks or never ends) becomes a candidate that carries its one-line error.
The walk keeps its own stack, so a zoo nested hundreds of folders deep is searched like any other
(a recursive walk ran out of Python's stack near 500 levels); a path too long for the operating
system is a folder that cannot be listed.

Names come from the file system and need not be UTF-8 or printable: a candidate's ``name`` is
shown escaped (``huref.paths.shown``: ``bad\\xff`` for the byte 0xff), its ``path`` keeps the
bytes that open it.

A candidate's ``files`` are the files its fingerprint depends on (weights, config, tokenizer; for
a loose ``.safetensors`` file, the tokenizer files beside it): their (size, mtime_ns, ctime_ns,
inode) are the cache key that lets an unchanged zoo be rescanned without reading them.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from huref.checkpoint.vocab import TOKENIZER_FILES
from huref.errors import UsageError
from huref.paths import shown, special_kind

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
CONFIG_METADATA_KEY = "huref.config"
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class Candidate:
    name: str  # unique within the scan: path relative to the zoo (HF cache: ORG/NAME)
    path: Path
    kind: str  # folder | gguf | llama2c | safetensors | error
    files: tuple[Path, ...] = ()
    error: str | None = None


def one_line(text: str) -> str:
    """Errors are reported on one printable line (names escaped), at most MAX_ERROR_CHARS characters."""
    line = shown(" ".join(str(text).split()))
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def _relevant(name: str) -> bool:
    return (
        name == "config.json"
        or name in TOKENIZER_FILES
        or name.endswith((".safetensors", ".index.json"))
        or (name.startswith("pytorch_model") and name.endswith(".bin"))
    )


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    return e.strerror or str(e)


Ancestors = tuple[tuple[int, int], ...]  # (st_dev, st_ino) of every folder from the root down


class _Walker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.out: list[Candidate] = []
        self.todo: list[tuple[Path, Ancestors]] = []  # folders still to list: the walk's own stack

    def rel(self, p: Path) -> str:
        return shown(p.relative_to(self.root).as_posix())

    def error(self, p: Path, reason: str) -> None:
        self.out.append(Candidate(self.rel(p), p, "error", error=one_line(f"{self.rel(p)}: {reason}")))

    def run(self, root_key: tuple[int, int]) -> None:
        self.todo.append((self.root, (root_key,)))
        while self.todo:
            self.walk(*self.todo.pop())

    def walk(self, d: Path, ancestors: Ancestors) -> None:
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            if d == self.root:
                raise UsageError(f"{shown(d)}: cannot list the zoo folder ({_os_reason(err)})") from None
            self.error(d, f"cannot list folder ({_os_reason(err)})")
            return
        names = {e.name for e in entries}
        if "config.json" in names or any(i in names for i in WEIGHT_INDEXES):
            self.folder_candidate(d, entries, None if d != self.root else shown(d.name))  # a zoo of one
            return
        if d.name.startswith("models--") and "snapshots" in names:
            self.hf_cache_repo(d)
            return
        for entry in entries:
            if not entry.name.startswith("."):
                self.entry(Path(entry.path), entry, ancestors)

    def entry(self, p: Path, e: os.DirEntry, ancestors: Ancestors) -> None:
        try:
            st = p.stat()  # follows symlinks
        except OSError as err:
            if e.is_symlink():
                if err.errno == errno.ENOENT:
                    self.error(p, f"dangling symlink to {os.readlink(p)}")
                else:
                    self.error(p, _os_reason(err))
            elif p.suffix.lower() in (".gguf", ".bin", ".safetensors"):
                self.error(p, _os_reason(err))
            return
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                self.error(
                    p,
                    f"symlink loop: {os.readlink(p) if e.is_symlink() else p.name} leads back to an enclosing folder",
                )
                return
            self.todo.append((p, (*ancestors, key)))
            return
        suffix = p.suffix.lower()
        if suffix not in (".gguf", ".bin", ".safetensors"):
            return
        if not stat.S_ISREG(st.st_mode):
            self.error(p, f"not a regular file ({special_kind(p) or 'special'}); not opened")
            return
        if suffix == ".gguf":
            self.out.append(Candidate(self.rel(p), p, "gguf", (p,)))
        elif suffix == ".bin":
            self.bin_file(p)
        else:
            self.loose_safetensors(p)

    def bin_file(self, p: Path) -> None:
        from huref.checkpoint.llama2c import looks_like_llama2c

        try:
            with open(p, "rb"):
                pass
        except OSError as e:
            self.error(p, f"cannot read ({_os_reason(e)})")
            return
        if looks_like_llama2c(p):
            self.out.append(Candidate(self.rel(p), p, "llama2c", (p,)))

    def loose_safetensors(self, p: Path) -> None:
        from huref.checkpoint.safetensors_header import read_metadata
        from huref.errors import CheckpointError

        try:
            meta = read_metadata(p)
        except CheckpointError:
            return  # not a readable safetensors file, and nothing says it is a checkpoint
        if CONFIG_METADATA_KEY in meta:
            # its vocabulary is read from the tokenizer files beside it: they are part of its identity
            beside = tuple(p.parent / n for n in TOKENIZER_FILES if (p.parent / n).is_file())
            self.out.append(Candidate(self.rel(p), p, "safetensors", (p, *beside)))

    def folder_candidate(self, d: Path, entries: list[os.DirEntry], name: str | None = None) -> None:
        files = tuple(Path(e.path) for e in entries if _relevant(e.name))
        self.out.append(Candidate(name or self.rel(d), d, "folder", files))

    def hf_cache_repo(self, repo: Path) -> None:
        """``models--ORG--NAME``: each snapshot folder is a checkpoint named ORG/NAME[@REV]."""
        base = "/".join(repo.name.removeprefix("models--").split("--"))
        snap_dir = repo / "snapshots"
        try:
            snaps = sorted(p for p in snap_dir.iterdir() if not p.name.startswith("."))
        except OSError as e:
            self.error(snap_dir, f"cannot list folder ({_os_reason(e)})")
            return
        for s in snaps:
            name = shown(base if len(snaps) == 1 else f"{base}@{s.name[:12]}")
            try:
                with os.scandir(s) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self.error(s, f"cannot list folder ({_os_reason(e)})")
                continue
            self.folder_candidate(s, entries, name)


def discover(zoo: str | Path) -> list[Candidate]:
    """Every candidate under ``zoo``, sorted by name; names are unique."""
    root = Path(zoo).absolute()
    if not root.is_dir():
        raise UsageError(f"{shown(zoo)}: not a folder")
    w = _Walker(root)
    st = root.stat()
    w.run((st.st_dev, st.st_ino))
    out: list[Candidate] = []
    used: set[str] = set()
    for c in sorted(w.out, key=lambda c: (c.name, str(c.path))):
        name = c.name
        if name in used:  # an HF cache name that collides with a folder of that relative path
            name = w.rel(c.path)
        n = 2
        while name in used:
            name, n = f"{c.name}#{n}", n + 1
        used.add(name)
        out.append(c if name == c.name else Candidate(name, c.path, c.kind, c.files, c.error))
    return sorted(out, key=lambda c: c.name)
