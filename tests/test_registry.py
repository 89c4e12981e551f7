"""The registry of known bases: SQLite in WAL mode with fingerprint files stored by content hash,
``huref registry add | list | remove | import | mark-independent``, independent pairs and the Z
null that ``huref compare`` reads from it, and one-line errors for every bad request."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from huref.cli import main
from huref.errors import RegistryError
from huref.invariants import Settings, fingerprint_model, save_fingerprint
from huref.registry.store import DB_NAME, MIN_NULL_PAIRS, Base, Store, default_null
from huref.scan.store import scan_conn

ROBUST = Settings(modes=("robust",))


@pytest.fixture(scope="module")
def fp_files(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Robust fingerprint files of three zoo bases (two share a vocabulary, one does not)."""
    d = tmp_path_factory.mktemp("fps")
    return {
        n: save_fingerprint(fingerprint_model(tiny_zoo / n, ROBUST), d / f"{n}.safetensors")
        for n in ("llama-a", "llama-b", "stories260k")
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("HUREF_HOME", str(h))
    return h


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("huref: error: ")
    return err[0]


def test_add_stores_fingerprint_by_content_hash_in_wal_registry(
    home: Path, fp_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a", "--family", "A"]) == 0
    with Store(home) as s:
        (b,) = s.bases()
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.integrity_check() == "ok"
    assert (b.name, b.family, b.architecture, b.n_layers) == ("llama-a", "A", "llama", 4)
    blob = home / "fingerprints" / f"{b.fingerprint}.safetensors"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == b.fingerprint
    assert blob.read_bytes() == fp_files["llama-a"].read_bytes()
    capsys.readouterr()
    assert main(["registry", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [x["name"] for x in doc["bases"]] == ["llama-a"] and doc["independent_pairs"] == []


def test_add_from_checkpoint_fingerprints_it(home: Path, tiny_zoo: Path) -> None:
    assert main(["registry", "add", str(tiny_zoo / "llama-c"), "--name", "org/llama-c", "--n", "64"]) == 0
    with Store(home) as s:
        b = s.require("org/llama-c")
        fp = s.load_blob(b.fingerprint)
    assert fp.robust is not None and fp.robust.n == 64 and fp.paper is not None
    assert b.source.startswith("checkpoint ") and b.weights  # weight identity recorded


def test_families_make_independent_pairs_and_incomparable_pairs_are_skipped(
    home: Path, fp_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for n, fam in (("llama-a", "A"), ("llama-b", "B"), ("stories260k", "S")):
        assert main(["registry", "add", str(fp_files[n]), "--name", n, "--family", fam]) == 0
    err = capsys.readouterr().err
    assert "independent pair llama-b / llama-a" in err
    assert "no pair stories260k / llama-a: not comparable" in err  # no shared vocabulary
    with Store(home) as s:
        pairs = s.pairs()
    assert [(p.a, p.b, p.reason) for p in pairs] == [("llama-a", "llama-b", "family")]
    assert 0 < pairs[0].ics < 30  # independent bases: low robust ICS


def test_same_family_makes_no_pair_and_mark_independent_declares_one(
    home: Path, fp_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for n in ("llama-a", "llama-b"):
        assert main(["registry", "add", str(fp_files[n]), "--name", n, "--family", "llama"]) == 0
    with Store(home) as s:
        assert s.pairs() == []
    assert main(["registry", "mark-independent", "llama-b", "llama-a"]) == 0
    with Store(home) as s:
        assert [(p.a, p.b, p.reason) for p in s.pairs()] == [("llama-a", "llama-b", "declared")]
    capsys.readouterr()
    assert main(["registry", "mark-independent", "llama-a", "llama-a"]) == 2
    assert "independent of itself" in _err_line(capsys)
    assert main(["registry", "unmark-independent", "llama-a", "llama-b"]) == 0
    with Store(home) as s:
        assert s.pairs() == []


def test_mark_independent_refuses_a_derived_pair(
    home: Path, tiny_zoo: Path, fp_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sft = save_fingerprint(fingerprint_model(tiny_zoo / "llama-a-sft", ROBUST), tmp_path / "sft.safetensors")
    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a"]) == 0
    assert main(["registry", "add", str(sft), "--name", "llama-a-sft"]) == 0
    capsys.readouterr()
    assert main(["registry", "mark-independent", "llama-a", "llama-a-sft"]) == 2
    assert "look derived" in _err_line(capsys)


def test_remove_deletes_base_pairs_and_unshared_blob(home: Path, fp_files: dict[str, Path]) -> None:
    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "a", "--family", "A"]) == 0
    assert main(["registry", "add", str(fp_files["llama-b"]), "--name", "b", "--family", "B"]) == 0
    with Store(home) as s:
        blob = s.blob_path(s.require("b").fingerprint)
        assert len(s.pairs()) == 1
    assert main(["registry", "remove", "b"]) == 0
    with Store(home) as s:
        assert [b.name for b in s.bases()] == ["a"] and s.pairs() == []
    assert not blob.exists()


def test_import_folder_registers_every_fingerprint_file(
    home: Path, fp_files: dict[str, Path], tmp_path: Path
) -> None:
    d = tmp_path / "fps"
    (d / "sub").mkdir(parents=True)
    shutil.copy(fp_files["llama-a"], d / "llama-a.safetensors")
    shutil.copy(fp_files["llama-b"], d / "sub" / "llama-b.safetensors")
    (d / "notes.txt").write_text("not a fingerprint")
    assert main(["registry", "import", str(d)]) == 0
    with Store(home) as s:
        assert [b.name for b in s.bases()] == ["llama-a", "llama-b"]


def test_import_is_all_or_nothing_when_one_file_is_tampered(
    home: Path, fp_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "fps"
    d.mkdir()
    shutil.copy(fp_files["llama-a"], d / "a.safetensors")
    data = bytearray(fp_files["llama-b"].read_bytes())
    data[-10] ^= 0xFF  # flip a byte of a tensor: the seal no longer verifies
    (d / "b.safetensors").write_bytes(bytes(data))
    assert main(["registry", "import", str(d)]) == 2
    line = _err_line(capsys)
    assert "nothing imported" in line and "seal" in line
    with Store(home) as s:
        assert s.bases() == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["registry", "add", "{a}", "--name", "bad name!"], "invalid base name"),
        (["registry", "add", "{missing}", "--name", "x"], "no such file"),
        (["registry", "remove", "nope"], "no registry"),
        (["registry", "mark-independent", "x", "y"], "no registry"),
    ],
)
def test_bad_registry_requests_fail_with_one_line(
    argv: list[str],
    needle: str,
    home: Path,
    fp_files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [a.format(a=fp_files["llama-a"], missing=tmp_path / "missing") for a in argv]
    assert main(args) == 2
    assert needle in _err_line(capsys)
    assert not home.exists()  # a refused request leaves nothing behind


def test_duplicate_name_and_unknown_base_are_one_line_errors(
    home: Path, fp_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a"]) == 0
    capsys.readouterr()
    assert main(["registry", "add", str(fp_files["llama-b"]), "--name", "llama-a"]) == 2
    assert "already registered" in _err_line(capsys)
    assert main(["registry", "remove", "lama-a"]) == 2
    assert "did you mean 'llama-a'" in _err_line(capsys)
    assert main(["registry", "add", str(fp_files["llama-b"]), "--name", "llama-a", "--replace"]) == 0


def _fake_bases(s: Store, n: int) -> None:
    with s.transaction():
        for i in range(n):
            s.insert_base(Base(f"b{i}", f"f{i}", f"{i:064x}", "", "test", None, None, "now"))


def test_default_null_needs_five_pairs_and_never_creates_a_registry(home: Path) -> None:
    assert default_null() is None
    assert not home.exists()  # asking for the null created nothing
    with Store(home) as s:
        _fake_bases(s, 4)
        values = [3.0, 5.0, 7.0, 4.0, 6.0, 5.5]
        pairs = [("b0", "b1"), ("b0", "b2"), ("b0", "b3"), ("b1", "b2"), ("b1", "b3"), ("b2", "b3")]
        with s.transaction():
            for (a, b), v in list(zip(pairs, values, strict=True))[: MIN_NULL_PAIRS - 1]:
                s.set_pair(a, b, v, "declared")
        assert default_null() is None
        with s.transaction():
            for (a, b), v in zip(pairs, values, strict=True):
                s.set_pair(a, b, v, "declared")
    null = default_null()
    assert null is not None and null.n_pairs == 6
    assert null.mean == pytest.approx(sum(values) / 6)
    assert "registry: 6 independent base pairs" in null.source
    from huref.cli.science_cmds import _registry_null  # what `huref compare` uses

    assert _registry_null() == null


def test_concurrent_writers_do_not_lock_each_other_out(home: Path) -> None:
    with Store(home) as s:
        _fake_bases(s, 12)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with Store(home) as s:
                for i in range(12):
                    for j in range(i + 1, 12):
                        if (i + j) % 3 == k:
                            with s.transaction():
                                s.set_pair(f"b{i}", f"b{j}", float(i + j), "declared")
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = sqlite3.connect(home / DB_NAME)
    assert conn.execute("SELECT COUNT(*) FROM independent_pairs").fetchone()[0] == 66
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_scan_cache_keyed_without_ctime_is_rebuilt_and_the_bases_kept(home: Path) -> None:
    """Registries written before ctime joined the file-hash key: that cache table is dropped and
    recreated (its rows could vouch for a file rewritten in place); nothing else is touched."""
    with Store(home) as s:
        _fake_bases(s, 2)
        scan_conn(s).execute("DROP TABLE file_hashes")
        s.conn.execute(
            "CREATE TABLE file_hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
            "mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, sha256 TEXT NOT NULL)"
        )
        s.conn.execute("INSERT INTO file_hashes VALUES ('/m/model.safetensors', 1, 2, 3, 'abc')")
    with Store(home) as s:
        conn = scan_conn(s)  # the scan's tables are brought up to date by its first statement
        cols = [r[1] for r in conn.execute("PRAGMA table_info(file_hashes)")]
        assert "ctime_ns" in cols
        assert conn.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0] == 0
        assert [b.name for b in s.bases()] == ["b0", "b1"]


def test_concurrent_adds_see_each_other(
    tmp_path: Path, fp_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name check and the pairs with the other bases happen inside the write transaction:
    two adds that run at once (both fingerprints ready before either writes) neither miss their
    independent pair nor silently replace each other's base of the same name."""
    import huref.registry.enroll as enroll

    barrier = threading.Barrier(2)
    real_load = enroll.load_source

    def load_together(*a: object, **k: object) -> object:
        out = real_load(*a, **k)  # type: ignore[arg-type]
        barrier.wait(timeout=30)
        return out

    monkeypatch.setattr(enroll, "load_source", load_together)

    def together(home: Path, adds: list[tuple[str, str, str]]) -> list[str]:
        results: list[str] = []

        def add(name: str, src: str, family: str) -> None:
            try:
                with Store(home) as s:
                    enroll.add_base(s, fp_files[src], name, family=family)
                results.append("ok")
            except RegistryError as e:
                results.append(str(e))

        threads = [threading.Thread(target=add, args=a) for a in adds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(results)

    pairs_home = tmp_path / "pairs"
    assert together(pairs_home, [("llama-a", "llama-a", "A"), ("llama-b", "llama-b", "B")]) == ["ok", "ok"]
    with Store(pairs_home) as s:
        assert [(p.a, p.b) for p in s.pairs()] == [("llama-a", "llama-b")]

    names_home = tmp_path / "names"
    first, second = together(names_home, [("c", "llama-a", "A"), ("c", "llama-b", "B")])
    assert second == "ok" and "already registered" in first, (first, second)
    with Store(names_home) as s:
        assert [b.name for b in s.bases()] == ["c"]


def test_a_registry_locked_by_another_process_is_one_line_exit_2(
    home: Path, fp_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huref.registry.store as store

    with Store(home):
        pass
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(home / DB_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer that does not let go
    try:
        assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "a"]) == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "cannot write the registry (database is locked" in _err_line(capsys)
    with Store(home) as s:
        assert s.bases() == [] and s.integrity_check() == "ok"


# -- damaged registries ------------------------------------------------------------------------


def _blob(home: Path, name: str) -> Path:
    with Store(home) as s:
        return s.blob_path(s.require(name).fingerprint)


def test_a_fingerprint_file_swapped_for_another_base_is_refused_naming_the_base_and_the_fix(
    home: Path, fp_files: dict[str, Path], tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both files are sealed fingerprints, so only the SHA-256 in the file's name tells that
    llama-a's evidence is llama-b's: read as it was, the derivative of llama-a audited independent."""
    for n in ("llama-a", "llama-b"):
        assert main(["registry", "add", str(fp_files[n]), "--name", n]) == 0
    shutil.copy(_blob(home, "llama-b"), _blob(home, "llama-a"))
    capsys.readouterr()
    out = tmp_path / "a.html"
    argv = ["audit", str(tiny_zoo / "llama-a-sft"), "--registry", "--no-pcs", "--no-dogs", "-o", str(out)]
    assert main(argv) == 2
    line = _err_line(capsys)
    assert "registered base 'llama-a' is unusable" in line and "damaged or replaced" in line
    assert "audit --registry needs every base" in line
    fix = f"'huref registry add {fp_files['llama-a']} --name llama-a --replace' or 'huref registry remove llama-a'"
    assert fix in line
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_every_unusable_base_is_named_in_one_line(
    home: Path, fp_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for n in ("llama-a", "llama-b", "stories260k"):
        assert main(["registry", "add", str(fp_files[n]), "--name", n]) == 0
    a, b = _blob(home, "llama-a"), _blob(home, "llama-b")
    a.write_bytes(a.read_bytes()[:1000])  # truncated
    b.unlink()
    with Store(home) as s:
        with pytest.raises(RegistryError) as e:
            s.load_bases(s.bases(), "the scan stops; ")
        assert s.load_base(s.require("stories260k")).robust is not None
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("2 registered bases are unusable: 'llama-a' (")
    assert (
        "'llama-b' (" in msg and "fingerprint file missing" in msg and "the scan stops; fix each with" in msg
    )


def test_replace_repairs_a_damaged_fingerprint_file_of_the_same_size(
    home: Path, fp_files: dict[str, Path]
) -> None:
    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a"]) == 0
    blob = _blob(home, "llama-a")
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes
    blob.write_bytes(bytes(data))
    with Store(home) as s, pytest.raises(RegistryError, match="damaged or replaced"):
        s.load_blob(s.require("llama-a").fingerprint)
    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a", "--replace"]) == 0
    assert blob.read_bytes() == fp_files["llama-a"].read_bytes()
    with Store(home) as s:
        assert s.load_base(s.require("llama-a")).robust is not None


def _damage_table(home: Path, table: str) -> None:
    """Random bytes over the root page of one table; the file header and the schema stay intact."""
    conn = sqlite3.connect(home / DB_NAME)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.close()
    assert root > 1
    with open(home / DB_NAME, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes(range(256)) * (page_size // 256))


def test_a_damaged_database_page_is_one_line_and_exit_2(
    home: Path, fp_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(home) as s:
        _fake_bases(s, 3)
    _damage_table(home, "bases")
    with Store(home) as s, pytest.raises(RegistryError, match="registry database is damaged"):
        s.bases()  # a plain read, outside any transaction
    for argv in (["registry", "list"], ["registry", "add", str(fp_files["llama-a"]), "--name", "x"]):
        assert main(argv) == 2
        line = _err_line(capsys)
        assert (
            f"{home / DB_NAME}: the registry database is damaged (database disk image is malformed)" in line
        )
        assert "restore it from a backup" in line and "HUREF_HOME" in line


def test_opening_a_registry_to_read_it_takes_no_write_lock(
    home: Path, fp_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huref.registry.store as store

    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a"]) == 0
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(home / DB_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer that does not let go: readers must not wait for it
    try:
        capsys.readouterr()
        assert main(["registry", "list", "--json"]) == 0
        assert [b["name"] for b in json.loads(capsys.readouterr().out)["bases"]] == ["llama-a"]
        with Store(home, create=False) as s:
            assert set(s.load_bases(s.bases())) == {"llama-a"}
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
def read_only(home: Path) -> Iterator[Callable[[], None]]:
    """Makes the registry read-only for this process: chmod for a user, chattr +i for root (whom
    permission bits do not stop); skipped where neither works."""
    import os
    import subprocess

    paths = [home, home / "fingerprints", home / DB_NAME]
    done: list[str] = []

    def lock() -> None:
        if os.geteuid() != 0:
            for p in paths:
                p.chmod(p.stat().st_mode & ~0o222)
            done.append("chmod")
        elif shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a read-only registry")
        else:
            r = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"chattr +i refused here ({r.stderr.strip()})")
            done.append("chattr")

    yield lock
    if "chattr" in done:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
    elif "chmod" in done:
        for p in paths:
            p.chmod(p.stat().st_mode | 0o200)


def test_a_read_only_registry_is_listed_and_audited_and_writes_fail_with_exit_3(
    home: Path,
    fp_files: dict[str, Path],
    tiny_zoo: Path,
    tmp_path: Path,
    read_only: Callable[[], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    for n in ("llama-a", "llama-b"):
        assert main(["registry", "add", str(fp_files[n]), "--name", n]) == 0
    read_only()
    capsys.readouterr()
    assert main(["registry", "list", "--json"]) == 0
    assert [b["name"] for b in json.loads(capsys.readouterr().out)["bases"]] == ["llama-a", "llama-b"]
    out = tmp_path / "a.html"
    argv = ["audit", str(tiny_zoo / "llama-a-sft"), "--registry", "--no-pcs", "--no-dogs", "-o", str(out)]
    assert main(argv) == 0
    assert json.loads(out.with_suffix(".json").read_text())["verdict"]["verdict"] == "derived"
    capsys.readouterr()
    for argv in (
        ["registry", "add", str(fp_files["stories260k"]), "--name", "s"],
        ["registry", "remove", "llama-b"],
        ["registry", "mark-independent", "llama-a", "llama-b"],
    ):
        assert main(argv) == 3, argv
        assert "the registry is read-only here" in _err_line(capsys)
    assert not list((home / "fingerprints").glob(".*"))  # no temporary file was left either


def test_names_differing_only_in_case_are_one_base(
    home: Path, fp_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a"]) == 0
    capsys.readouterr()
    for extra in ([], ["--replace"]):
        assert main(["registry", "add", str(fp_files["llama-b"]), "--name", "Llama-A", *extra]) == 2
        line = _err_line(capsys)
        assert "a base named 'llama-a' is already registered" in line and "differ only in case" in line
    d = tmp_path / "fps"
    d.mkdir()
    shutil.copy(fp_files["llama-b"], d / "LLAMA-A.safetensors")
    assert main(["registry", "import", str(d)]) == 2
    assert "'llama-a' is already registered" in _err_line(capsys)
    assert main(["registry", "remove", "LLAMA-A"]) == 2
    assert "did you mean 'llama-a'" in _err_line(capsys)
    with Store(home) as s:
        assert [b.name for b in s.bases()] == ["llama-a"]


def test_a_base_name_that_is_also_a_path_here_is_refused_and_registered_names_never_read_paths(
    home: Path,
    fp_files: dict[str, Path],
    tiny_zoo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """From a folder holding a model named like a registered base, `--base llama-a` could mean
    either: refused, with `./llama-a` for the path. Names given as registered names (the demo's
    audits) are looked up in the registry only, whatever the current folder holds."""
    from huref.report.audit import run_audit

    assert main(["registry", "add", str(fp_files["llama-a"]), "--name", "llama-a"]) == 0
    here = tmp_path / "here"
    shutil.copytree(tiny_zoo / "llama-b", here / "llama-a")  # another model under the base's name
    monkeypatch.chdir(here)
    capsys.readouterr()
    out = tmp_path / "r.html"
    argv = [
        "audit",
        str(tiny_zoo / "llama-a-sft"),
        "--base",
        "llama-a",
        "--no-pcs",
        "--no-dogs",
        "-o",
        str(out),
    ]
    assert main(argv) == 2
    line = _err_line(capsys)
    assert "both a path here and a registered base" in line and "./llama-a" in line
    assert not out.exists()
    argv[3] = "./llama-a"  # the path, said so: llama-b's weights, unrelated to the suspect
    assert main(argv) == 0
    assert json.loads(out.with_suffix(".json").read_text())["verdict"]["verdict"] != "derived"
    ev, _, _ = run_audit(
        tiny_zoo / "llama-a-sft", tmp_path / "n.html", [], False, [], ROBUST, registered=["llama-a"]
    )
    assert ev["verdict"]["verdict"] == "derived"
