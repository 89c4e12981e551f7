"""Models named by Hugging Face repository ids (``owner/name[@revision]``), resolved in one place.

An argument that is not an existing local path and parses as a repository id is looked up on the
hub through ``huggingface_hub``'s public API, honouring its environment at call time
(``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``). Only what a command
needs moves:

- config, tokenizer files and the safetensors index go through ``hf_hub_download`` into the hub's
  own cache layout (``models--owner--name/snapshots/<commit>/...``);
- weights are *not* downloaded whole by ``open_hub_checkpoint`` (in hub_ranges): the safetensors headers and then
  the bytes of exactly the tensors (or embedding rows) that are read arrive by HTTP range reads,
  into a sparse local copy of each file (see ``huref.checkpoint.hub_ranges``). A paper-mode
  fingerprint of a 7B model so moves megabytes; a command that reads every layer moves the tensors
  it reads and nothing else (never an unread file);
- ``resolve_model(spec, need="files")`` downloads whole weight files (resumable, with the hub's
  progress bar) for commands that hand a folder to ``transformers`` (FP-Vec verify, stamp).

The revision (a branch, tag or commit; default ``main``) is resolved to its commit by one metadata
request, which also gives each file's size and LFS SHA-256 (recorded as the weight hashes of a
file read only in part). What was resolved is remembered in huref's range cache, so that
``HF_HUB_OFFLINE=1`` works from the cache and a commit revision seen before makes no request.
Nothing downloaded is executed: no ``trust_remote_code``, no pickles (``.bin`` weights are read
with ``torch.load(weights_only=True)`` only).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from huref.checkpoint.vocab import TOKENIZER_FILES
from huref.errors import CheckpointError
from huref.paths import shown

# Repository ids as the hub allows them: "owner/name", each part letters, digits, '.', '_', '-'
# (no leading punctuation, no '--' or '..'), up to 96 characters; a revision follows an '@'.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_SPEC = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]{{0,199}}))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"
DEFAULT_ENDPOINT = "https://huggingface.co"

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
METADATA_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES, ST_INDEX, BIN_INDEX)


@dataclass(frozen=True)
class RepoRef:
    """``owner/name`` and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @property
    def rev(self) -> str:
        return self.revision or DEFAULT_REVISION

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_id(text: str) -> RepoRef | None:
    """``owner/name[@revision]`` as a RepoRef; None when ``text`` is not shaped like one."""
    m = _REPO_SPEC.match(text)
    if m is None or "--" in m["repo"] or ".." in m["repo"] or m["repo"].endswith(".git"):
        return None
    rev = m["rev"]
    if rev is not None and (".." in rev or rev.endswith("/")):
        return None
    return RepoRef(m["repo"], rev)


def hub_reference(spec: str | os.PathLike[str]) -> RepoRef | None:
    """The repository a model argument names, or None: a local path that exists always wins
    (a folder named like ``owner/name`` in the working directory is read as that folder)."""
    text = os.fspath(spec)
    if not isinstance(text, str) or Path(text).exists():
        return None
    return parse_repo_id(text)


@dataclass(frozen=True)
class HubEnv:
    """The hub settings of this call, read from the environment when asked (not at import)."""

    endpoint: str
    cache_dir: Path  # the hub's cache (HF_HUB_CACHE)
    offline: bool
    token: str | None

    @classmethod
    def from_env(cls) -> HubEnv:
        env = os.environ
        home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or str(home / "hub")
        offline = env.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        return cls(endpoint, Path(cache).expanduser(), offline, env.get("HF_TOKEN") or None)

    @property
    def ranges_dir(self) -> Path:
        """huref's own cache beside the hub's: resolved revisions and sparse weight files."""
        return self.cache_dir.parent / "huref-hub-ranges"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None
    sha256: str | None  # the LFS object id: the SHA-256 of the file's bytes


@dataclass(frozen=True)
class Snapshot:
    """A revision resolved to its commit: the files it holds and where they go locally."""

    ref: RepoRef
    commit: str
    files: dict[str, RemoteFile]
    env: HubEnv

    @property
    def folder(self) -> Path:
        """The hub cache's snapshot folder of this commit (holds what was downloaded whole)."""
        return self.env.cache_dir / _repo_folder(self.ref.repo_id) / "snapshots" / self.commit

    @property
    def sparse_folder(self) -> Path:
        return self.env.ranges_dir / _repo_folder(self.ref.repo_id) / "sparse" / self.commit

    def weight_names(self) -> list[str]:
        """The safetensors weight files at the top of the repository (else PyTorch .bin ones)."""
        top = [n for n in self.files if "/" not in n]
        st = sorted(n for n in top if n.endswith(".safetensors"))
        return st or sorted(n for n in top if re.fullmatch(r"pytorch_model.*\.bin", n))


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


# ---------------------------------------------------------------------- errors
def hub_error(exc: BaseException, ref: RepoRef, env: HubEnv, what: str = "") -> CheckpointError:
    """One clear line for a failure of the hub or of the network (the caller raises it)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"{shown(str(ref))}{f' ({shown(what)})' if what else ''}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if env.offline or isinstance(exc, OfflineModeIsEnabled):
        return CheckpointError(
            f"{name}: not in the local hub cache ({shown(env.cache_dir)}) and HF_HUB_OFFLINE is set; "
            "run once online or unset HF_HUB_OFFLINE"
        )
    if isinstance(exc, GatedRepoError) or (
        status in (401, 403) and not isinstance(exc, RepositoryNotFoundError)
    ):
        return CheckpointError(
            f"{name}: access refused by {shown(env.endpoint)} (HTTP {status}: gated or private repository); "
            "accept its terms on the hub and set HF_TOKEN to a token that may read it"
        )
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"{name}: revision {shown(ref.rev)!r} not found in {shown(ref.repo_id)}")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(
            f"{name}: no such local path, and no repository {shown(ref.repo_id)} on {shown(env.endpoint)} "
            "(a private one needs HF_TOKEN)"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return CheckpointError(f"{name}: file not found in the repository")
    if isinstance(exc, HfHubHTTPError) and status is not None:
        return CheckpointError(f"{name}: the hub at {shown(env.endpoint)} answered HTTP {status}")
    if isinstance(exc, LocalEntryNotFoundError):  # the hub's way of saying "unreachable, not cached"
        return CheckpointError(
            f"{name}: cannot reach {shown(env.endpoint)} and nothing is cached (network failure)"
        )
    return CheckpointError(f"{name}: cannot reach {shown(env.endpoint)} (network failure: {shown(exc)})")


def _is_hub_failure(exc: BaseException) -> bool:
    """Errors of the hub client or of the network (never huref's own, nor programming errors)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(
        exc, (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
    ):
        return True
    # the hub's HTTP client raises its own transport errors (connection refused, reset, timeout)
    return type(exc).__module__.split(".")[0].startswith("httpx") or "Transport" in type(exc).__name__


@contextmanager
def hub_errors(ref: RepoRef, env: HubEnv, what: str = "") -> Iterator[None]:
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:
        if _is_hub_failure(e):
            raise hub_error(e, ref, env, what) from None
        raise


# ---------------------------------------------------------------------- resolution
def _revision_record(env: HubEnv, ref: RepoRef) -> Path:
    return env.ranges_dir / _repo_folder(ref.repo_id) / "revisions" / (quote(ref.rev, safe="") + ".json")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _from_record(env: HubEnv, ref: RepoRef) -> Snapshot | None:
    path = _revision_record(env, ref)
    try:
        doc = json.loads(path.read_text())
        files = {f["name"]: RemoteFile(str(f["name"]), f.get("size"), f.get("sha256")) for f in doc["files"]}
        commit = str(doc["commit"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Snapshot(ref, commit, files, env) if _COMMIT.match(commit) else None


def resolve_revision(ref: RepoRef, env: HubEnv | None = None) -> Snapshot:
    """The commit a revision names and the files it holds: one metadata request, or none when
    offline or when the revision is a commit already resolved once."""
    env = env or HubEnv.from_env()
    cached = _from_record(env, ref)
    if env.offline or (cached is not None and _COMMIT.match(ref.rev)):
        if cached is None:
            raise hub_error(ConnectionError("offline"), ref, env)
        return cached
    from huggingface_hub import HfApi

    with hub_errors(ref, env):
        info = HfApi(endpoint=env.endpoint, token=env.token).model_info(
            ref.repo_id, revision=ref.rev, files_metadata=True
        )
    commit = str(info.sha or "")
    if not _COMMIT.match(commit):
        raise CheckpointError(f"{shown(str(ref))}: the hub gave no commit for revision {shown(ref.rev)!r}")
    files = {}
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        files[s.rfilename] = RemoteFile(s.rfilename, s.size, getattr(lfs, "sha256", None) if lfs else None)
    snap = Snapshot(ref, commit, files, env)
    doc = {
        "repo": ref.repo_id,
        "revision": ref.rev,
        "commit": commit,
        "files": [vars(f) for f in files.values()],
    }
    _write_atomic(_revision_record(env, ref), json.dumps(doc))
    _write_atomic(_revision_record(env, RepoRef(ref.repo_id, commit)), json.dumps(doc))
    return snap


def download(snap: Snapshot, filename: str) -> Path:
    """One whole file of the snapshot through the hub's cache (resumable, its progress bar)."""
    from huggingface_hub import hf_hub_download

    with hub_errors(snap.ref, snap.env, filename):
        return Path(
            hf_hub_download(
                snap.ref.repo_id,
                filename,
                revision=snap.commit,  # a commit already in the cache answers without a request
                cache_dir=snap.env.cache_dir,
                endpoint=snap.env.endpoint,
                token=snap.env.token,
                local_files_only=snap.env.offline,
            )
        )


def resolve_model(spec: str | RepoRef, need: str = "metadata") -> Path:
    """The local snapshot folder of a repository id, holding what ``need`` asks for:

    ``metadata``: config, tokenizer files and weight indexes (weights are then read by range,
    ``open_hub_checkpoint``); ``files``: every weight file too, downloaded whole.
    """
    if need not in ("metadata", "files"):
        raise ValueError(need)
    ref = spec if isinstance(spec, RepoRef) else parse_repo_id(spec)
    if ref is None:
        raise CheckpointError(f"{shown(spec)}: no such file or folder, nor a hub repository id (owner/name)")
    snap = resolve_revision(ref)
    fetch_metadata(snap)
    if need == "files":
        for name in snap.weight_names():
            download(snap, name)
    return snap.folder


def fetch_metadata(snap: Snapshot) -> None:
    """config.json (required), the tokenizer files and weight indexes the repository has."""
    if "config.json" not in snap.files:
        raise CheckpointError(f"{shown(str(snap.ref))}: the repository has no config.json")
    for name in METADATA_FILES:
        if name in snap.files:
            download(snap, name)
