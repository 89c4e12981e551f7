"""The registry of known bases under $HUREF_HOME: SQLite (WAL) plus fingerprint files by content hash."""

from huref.registry.store import Base, Pair, Store, default_null, huref_home

__all__ = ["Base", "Pair", "Store", "default_null", "huref_home"]
