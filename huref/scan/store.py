"""The scan's tables, kept in the registry database (``huref.registry.schema``): one
transaction then covers a model's hashes, fingerprint and comparisons (see ``huref.scan.cache``
for what each level caches and how it is keyed).

Schema (version 1 of the registry file, where these tables have been since its first release)::

    file_hashes(path PRIMARY KEY, size, mtime_ns, ctime_ns, inode, sha256)
    fingerprint_cache(content, settings, fingerprint, format, weights, seconds,
                      PRIMARY KEY(content, settings))
    comparisons(fingerprint, base_fingerprint, method, ics, log10_p, shared_tokens, error, detail,
                PRIMARY KEY(fingerprint, base_fingerprint, method))
    failures(signature PRIMARY KEY, error)                              broken models
    fpvec_results(content, commitment, method, fsr, hits, n, near_miss_fsr, error,
                  PRIMARY KEY(content, commitment, method))             scan --keys
    thumbnails(fingerprint, renderer, size, png, PRIMARY KEY(fingerprint, renderer, size))

``fingerprint_cache.fingerprint`` names a fingerprint file of the registry: the registry keeps
that file while the row exists. A ``file_hashes`` written before ctime joined its key is dropped
and created anew (its rows could vouch for a file rewritten in place with its old mtime put back).

The tables are created when a process that has imported this module opens a registry it can
write, and at the latest by the scan's first statement (:func:`scan_conn`); a registry that
already holds them, as every registry written by an earlier huref does, is opened without a write.
"""

from __future__ import annotations

from huref.registry.db import Connection
from huref.registry.schema import PARTS
from huref.registry.store import Store, Tables

SCAN_TABLES = Tables(
    "scan",
    """
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprint_cache (
    content TEXT NOT NULL,
    settings TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    format TEXT NOT NULL,
    weights TEXT NOT NULL,
    seconds REAL,
    PRIMARY KEY (content, settings)
);
CREATE TABLE IF NOT EXISTS comparisons (
    fingerprint TEXT NOT NULL,
    base_fingerprint TEXT NOT NULL,
    method TEXT NOT NULL,
    ics REAL,
    log10_p REAL,
    shared_tokens INTEGER,
    error TEXT,
    detail TEXT,
    PRIMARY KEY (fingerprint, base_fingerprint, method)
);
CREATE TABLE IF NOT EXISTS failures (
    signature TEXT PRIMARY KEY,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fpvec_results (
    content TEXT NOT NULL,
    commitment TEXT NOT NULL,
    method TEXT NOT NULL,
    fsr REAL,
    hits INTEGER,
    n INTEGER,
    near_miss_fsr REAL,
    error TEXT,
    PRIMARY KEY (content, commitment, method)
);
CREATE TABLE IF NOT EXISTS thumbnails (
    fingerprint TEXT NOT NULL,
    renderer TEXT NOT NULL,
    size INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (fingerprint, renderer, size)
);
""",
    blob_columns=(("fingerprint_cache", "fingerprint"),),
    rebuild_without={"file_hashes": "ctime_ns"},
)
PARTS.add(SCAN_TABLES.owner, SCAN_TABLES)  # a registry opened in a process that scans gets them at once

WHY = ", where the scan keeps its caches (or set HUREF_HOME to a registry of your own)"


def scan_conn(store: Store) -> Connection:
    """The registry's connection, once the scan's tables are there (created on first use)."""
    return store.ensure_tables(SCAN_TABLES, WHY)
