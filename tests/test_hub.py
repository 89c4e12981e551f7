"""Hub repository ids wherever a model is accepted: a loopback hub serves tiny zoo models with the
endpoints huggingface_hub uses (revision API, ``resolve`` with HEAD/GET and Range), selected by
HF_ENDPOINT, with an empty HF_HUB_CACHE under tmp_path."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import pytest
import torch

from huref.checkpoint import open_checkpoint
from huref.checkpoint.hub import hub_reference, parse_repo_id
from huref.cli.app import main
from huref.invariants import Settings, fingerprint_model

WEIGHT = re.compile(r"\.safetensors$")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    nbytes: int  # body bytes sent


@dataclass
class FakeHub:
    """Repositories: repo id -> commit -> file name -> bytes; refs: (repo, branch or tag) -> commit."""

    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)
    refs: dict[tuple[str, str], str] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    log: list[Request] = field(default_factory=list)

    def add(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        commit = hashlib.sha1(f"{repo}{len(self.refs)}".encode()).hexdigest()
        self.repos.setdefault(repo, {})[commit] = files
        self.refs[(repo, branch)] = commit
        return commit

    def commit_of(self, repo: str, rev: str) -> str | None:
        if rev in self.repos.get(repo, {}):
            return rev
        return self.refs.get((repo, rev))

    def weight_requests(self) -> list[Request]:
        return [r for r in self.log if WEIGHT.search(r.path) and r.method == "GET"]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            hub.log.append(
                Request(self.command, self.path, self.headers.get("Range"), 0 if head else len(body))
            )

        def _error(self, code: int, error_code: str, head: bool = False) -> None:
            self._send(code, b'{"error": "x"}', {"X-Error-Code": error_code}, head)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
            if m:
                return self._info(m[1], m[2])
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if not m:
                return self._error(404, "EntryNotFound", head)
            repo, rev, name = m[1], m[2], m[3]
            if repo in hub.gated:
                return self._error(401, "GatedRepo", head)
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound", head)
            commit = hub.commit_of(repo, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", head)
            data = hub.repos[repo][commit].get(name)
            if data is None:
                return self._error(404, "EntryNotFound", head)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            headers["Accept-Ranges"] = "bytes"
            rng = self.headers.get("Range")
            if rng and not head:
                lo_s, hi_s = re.fullmatch(r"bytes=(\d+)-(\d*)", rng).groups()  # type: ignore[union-attr]
                lo, hi = int(lo_s), min(int(hi_s) + 1 if hi_s else len(data), len(data))
                headers["Content-Range"] = f"bytes {lo}-{hi - 1}/{len(data)}"
                return self._send(206, data[lo:hi], headers)
            if head:  # Content-Length of the file itself
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                hub.log.append(Request("HEAD", self.path, None, 0))
                return None
            return self._send(200, data, headers)

        def _info(self, repo: str, rev: str) -> None:
            if repo in hub.gated:
                return self._error(401, "GatedRepo")
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound")
            commit = hub.commit_of(repo, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound")
            files = hub.repos[repo][commit]
            siblings = [
                {
                    "rfilename": n,
                    "size": len(d),
                    **(
                        {"lfs": {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}}
                        if WEIGHT.search(n)
                        else {}
                    ),
                }
                for n, d in files.items()
            ]
            body = json.dumps({"id": repo, "modelId": repo, "sha": commit, "siblings": siblings}).encode()
            return self._send(200, body, {"Content-Type": "application/json"})

    return Handler


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # the hub client reads HF_HUB_OFFLINE once, at import (conftest sets it for the whole run)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield state
    server.shutdown()
    server.server_close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _sharded(folder: Path, dest: Path) -> Path:
    """A copy of ``folder`` whose weights are split into two shards with an index."""
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    for p in folder.iterdir():
        if p.is_file() and p.suffix != ".safetensors":
            shutil.copy(p, dest / p.name)
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, part in halves.items():
        save_file({n: tensors[n].contiguous() for n in part}, dest / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


def _same(fa, fb) -> None:  # type: ignore[no-untyped-def]
    for mode in ("robust", "paper"):
        a, b = getattr(fa, mode), getattr(fb, mode)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.terms, b.terms)


EXTRA = "original/consolidated.00.pth"  # a large file no command needs


def test_repo_id_parsing_and_local_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_repo_id("acme/llama-a") == parse_repo_id("acme/llama-a@main").__class__("acme/llama-a", None)
    assert parse_repo_id("acme/llama-a@v1.0").revision == "v1.0"  # type: ignore[union-attr]
    for bad in ("llama", "./acme/llama", "/abs/x", "a/b/c", "a--b/c", "a/b@", "a/../b", "acme/x.git"):
        assert parse_repo_id(bad) is None, bad
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "llama-a").mkdir(parents=True)
    assert hub_reference("acme/llama-a") is None  # an existing folder is a path, never a repo id
    assert hub_reference("acme/other") is not None


def test_paper_fingerprint_moves_only_header_and_tensor_ranges(hub: FakeHub, tiny_zoo: Path) -> None:
    local = tiny_zoo / "llama-a"
    files = _files(local)
    files[EXTRA] = bytes(4 * 2**20)
    commit = hub.add("acme/llama-a", files)
    settings = Settings(modes=("paper",))
    fp = fingerprint_model("acme/llama-a", settings)
    _same(fp, fingerprint_model(local, settings))
    assert fp.meta["model"]["name"] == "acme/llama-a"
    assert (
        fp.meta["model"]["sha256"]["model.safetensors"]
        == hashlib.sha256(files["model.safetensors"]).hexdigest()
    )
    weights = hub.weight_requests()
    assert weights and all(r.range for r in weights)  # never the whole weight file
    fetched = sum(r.nbytes for r in weights)
    assert fetched < 0.6 * len(files["model.safetensors"])  # last two layers + probe rows only
    assert not any(EXTRA in r.path for r in hub.log)
    assert any("/api/models/acme/llama-a/revision/main" in r.path for r in hub.log)

    hub.log.clear()  # a second run: one revision lookup (has main moved?), no file bytes
    _same(fingerprint_model("acme/llama-a", settings), fp)
    assert [r.path.split("?")[0] for r in hub.log] == ["/api/models/acme/llama-a/revision/main"]
    hub.log.clear()  # the commit itself, seen before: nothing at all
    _same(fingerprint_model(f"acme/llama-a@{commit}", settings), fp)
    assert hub.log == []


def test_offline_reads_the_cache_and_an_empty_cache_is_one_line(
    hub: FakeHub, tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add("acme/llama-a", _files(tiny_zoo / "llama-a"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["inspect", "acme/llama-a", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "acme/llama-a" in err[0]
    assert hub.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert main(["inspect", "acme/llama-a", "--json"]) == 0
    online = json.loads(capsys.readouterr().out)
    assert sum(r.nbytes for r in hub.weight_requests()) < 4096  # inspect reads the header only
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["inspect", "acme/llama-a", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == online and hub.log == []


def test_revision_selects_that_commit_and_errors_are_one_line(
    hub: FakeHub, tiny_zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add("acme/llama", _files(tiny_zoo / "llama-b"), branch="v1")
    hub.add("acme/llama", _files(tiny_zoo / "llama-a"), branch="main")
    settings = Settings(modes=("paper",))
    _same(fingerprint_model("acme/llama@v1", settings), fingerprint_model(tiny_zoo / "llama-b", settings))
    _same(fingerprint_model("acme/llama", settings), fingerprint_model(tiny_zoo / "llama-a", settings))
    hub.gated.add("acme/gated")
    cases = {
        "acme/llama@nope": "revision 'nope' not found",
        "acme/missing": "no repository acme/missing",
        "acme/gated": "HF_TOKEN",
    }
    for spec, words in cases.items():
        assert main(["inspect", spec]) == 2, spec
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (spec, err)


def test_network_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert main(["fingerprint", "acme/llama-a", "-o", str(tmp_path / "fp.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach" in err[0]
    assert not (tmp_path / "fp.safetensors").exists()


def test_sharded_repo_full_fingerprint_and_local_folder_wins(
    hub: FakeHub, tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sharded = _sharded(tiny_zoo / "llama-a", tmp_path / "sharded")
    files = _files(sharded)
    files[EXTRA] = bytes(2**20)
    hub.add("acme/sharded", files)
    fp = fingerprint_model("acme/sharded", Settings())
    _same(fp, fingerprint_model(sharded, Settings()))
    requested = {r.path.rsplit("/", 1)[-1] for r in hub.log}
    assert {"model.safetensors.index.json", "config.json", "tokenizer.json"} <= requested
    assert not any(EXTRA in r.path for r in hub.log)
    assert all(r.range for r in hub.weight_requests())
    # a local folder named like the repository id is read, and the hub is not asked
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_zoo / "llama-b", tmp_path / "acme" / "sharded")
    hub.log.clear()
    ck = open_checkpoint("acme/sharded")
    assert ck.origin is None and ck.path == Path("acme/sharded") and hub.log == []


def _fp8_release(folder: Path, dest: Path) -> Path:
    """``folder`` as an FP8 release (per-tensor scales), the format's documented layout."""
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    for p in folder.iterdir():
        if p.is_file() and p.name not in ("model.safetensors", "config.json"):
            shutil.copy(p, dest / p.name)
    out = {}
    for name, w in load_file(folder / "model.safetensors").items():
        if name.endswith("_proj.weight"):
            scale = w.abs().max() / 448.0  # float8_e4m3fn's largest value
            out[name] = (w / scale).to(torch.float8_e4m3fn)
            out[name[: -len("weight")] + "weight_scale_inv"] = scale.reshape(1)
        else:
            out[name] = w
    save_file(out, dest / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_a_quantized_repo_is_read_dequantized_by_range(hub: FakeHub, tiny_zoo: Path, tmp_path: Path) -> None:
    release = _fp8_release(tiny_zoo / "llama-a", tmp_path / "fp8")
    hub.add("acme/llama-a-fp8", _files(release))
    ck = open_checkpoint("acme/llama-a-fp8")
    assert ck.origin == "acme/llama-a-fp8" and ck.source.describe() == "fp8 (e4m3) 8-bit, per-tensor scale"
    name = "model.layers.0.self_attn.q_proj.weight"
    assert ck.source.info(name).dtype == "F32" and not any("scale_inv" in n for n in ck.source.names())
    assert torch.equal(ck.source.read(name), open_checkpoint(release).source.read(name))
    _same(fingerprint_model("acme/llama-a-fp8", Settings()), fingerprint_model(release, Settings()))
    assert all(r.range for r in hub.weight_requests())  # still range reads, never a whole download
