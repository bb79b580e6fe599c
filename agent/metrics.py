"""Every Prometheus metric of the agent, in one registry, with fixed label sets only.

Labels are drawn from closed sets (route, status class, problem type, document type, outcome);
never ids, claim numbers, file names or anything per patient (security.md §8, S-38). The admin
listener serves ``REGISTRY``; the public port never does.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

DOCUMENT_TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")
FILE_OUTCOMES = ("accepted", "duplicate", "superseded", "quarantined", "deferred")

# --- ingest (issue 5) ---
FILES_SEEN = Counter(
    "silson_ingest_files_seen_total", "Export files noticed in watch folders", registry=REGISTRY
)
FILES = Counter("silson_ingest_files_total", "Export files by outcome", ["outcome"], registry=REGISTRY)
RECORDS = Counter(
    "silson_ingest_records_total", "Document versions committed", ["document_type"], registry=REGISTRY
)
BYTES = Counter("silson_ingest_bytes_total", "Bytes of export files read", registry=REGISTRY)
INGEST_LAG = Histogram(
    "silson_ingest_lag_seconds",
    "File mtime to commit",
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
PENDING = Gauge("silson_ingest_files_pending", "Files waiting in watch folders", registry=REGISTRY)
FOLDERS_UNREACHABLE = Gauge(
    "silson_watch_folders_unreachable", "Watch folders currently unreachable", registry=REGISTRY
)
OBSERVER_RESTARTS = Counter(
    "silson_watch_observer_restarts_total", "Observer threads restarted", registry=REGISTRY
)
INGEST_PAUSED = Gauge("silson_ingest_paused", "1 while ingest is paused (disk full)", registry=REGISTRY)

# --- relay API (issue 6) ---
REQUESTS = Counter(
    "silson_api_requests_total", "Relay API requests", ["route", "status_class"], registry=REGISTRY
)
PROBLEMS = Counter(
    "silson_api_problems_total", "Problem responses by type", ["problem_type"], registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "silson_api_request_seconds", "Relay API request duration", ["route"], registry=REGISTRY
)
NAME_MISMATCH = Counter(
    "silson_search_name_mismatch_total", "Searches that withheld documents on name", registry=REGISTRY
)
DOCUMENTS_RELEASED = Counter(
    "silson_documents_released_total",
    "Documents released by fetch",
    ["document_type", "format"],
    registry=REGISTRY,
)
TLS_HANDSHAKE_FAILURES = Counter(
    "silson_tls_handshake_failures_total", "Failed or timed-out TLS handshakes", registry=REGISTRY
)
CONNECTIONS = Gauge("silson_api_connections", "Open authenticated connections", registry=REGISTRY)

# --- jobs / store ---
JOB_RUNS = Counter("silson_job_runs_total", "Scheduled job runs", ["job", "result"], registry=REGISTRY)
DOCUMENTS_STORED = Gauge(
    "silson_documents_current", "Current documents by status", ["status"], registry=REGISTRY
)


def exposition() -> bytes:
    """The Prometheus text format of every metric."""
    return generate_latest(REGISTRY)
