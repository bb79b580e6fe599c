"""Ingest: watch → settle → read → validate → commit → acknowledge, and the quarantine flow.

Modules, in pipeline order: ``names`` (hand-over naming rules), ``scanner`` (authoritative
periodic scan, settle/sentinel rules), ``watcher`` (watchdog observers as hints, supervised),
``order`` (the processing order: oldest mtime first, then name), ``reading`` (safe open/read),
``process`` (one file exactly once: prepare, then commit + acknowledge), ``prefetch`` (backfill
look-ahead in worker processes), ``storeport`` (the adapter to the store), ``service`` (threads,
queue, backfill progress), ``quarantine`` (list/show/retry/drop).
"""
