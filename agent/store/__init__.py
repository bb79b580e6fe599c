"""The encrypted document store (architecture.md "store"): SQLite behind one writer thread.

``Store.open(config)`` is the entry point; see ``agent/store/store.py`` for the API and the rules it
protects, ``crypto.py`` for the envelope scheme, ``schema.py`` for migrations, ``links.py`` for the
cross-document links and W-5xx evaluation done inside a commit, and ``backup.py`` for the backup
file format.
"""

from agent.store.models import (
    ACCEPTED,
    DUPLICATE,
    QUARANTINED,
    SUPERSEDED,
    Binding,
    BindingUpdate,
    FileFingerprint,
    FileOutcome,
    LedgerEntry,
    PurgeResult,
    QuarantineEntry,
    QuarantineItem,
    RotationResult,
    SearchHit,
    SearchResult,
    StoredDocument,
    StoreRecord,
    VerifyReport,
)
from agent.store.store import STORE_FILE, Store, normalise_name

__all__ = [
    "ACCEPTED",
    "DUPLICATE",
    "QUARANTINED",
    "SUPERSEDED",
    "STORE_FILE",
    "Binding",
    "BindingUpdate",
    "FileFingerprint",
    "FileOutcome",
    "LedgerEntry",
    "PurgeResult",
    "QuarantineEntry",
    "QuarantineItem",
    "RotationResult",
    "SearchHit",
    "SearchResult",
    "StoreRecord",
    "Store",
    "StoredDocument",
    "VerifyReport",
    "normalise_name",
]
