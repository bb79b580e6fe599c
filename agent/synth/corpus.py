"""Synthetic export corpora: documents grouped into files, corrections, duplicates, known violations.

`generate` yields `SynthFile`s in processing order (file names sort in that order) together with
the outcome ingest must give each file (exports.md §4) when files are processed in name order.
The outcome is computed by simulating the version rules of documents.md §9.2 over the files, so
it stays right when a violation lands in a file whose documents are later corrected (the
correction then arrives as a new key: ``accepted``, not ``superseded``).

What the corpus contains besides fresh originals:

- corrections (higher version, ``revision_reason = correction``) and re-issues, always in a file
  after the original's file;
- cancellations (§9.4 minimal records or full records with ``status = cancelled``); a receipt and
  its 세부산정내역 are cancelled together, so W-512 never fires;
- re-exports of earlier files, byte-identical or in another serialisation (``duplicate``);
- with ``invalid_rate``: that fraction of files carries one violation (`mutations`).

Randomness: two ``random.Random`` instances seeded from strings (documents; file plan), never the
global generator, never the clock: the same arguments give the same bytes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import random
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.documents.canonical import content_hash
from agent.formats import write_export
from agent.fsutil import atomic_write, ensure_dir, fsync_dir
from agent.synth import builders, mutations
from agent.synth.builders import ANCHOR_DATE, Doc, DocumentFactory

FORMATS: tuple[str, ...] = ("json", "jsonl", "xml", "csv")
ENCODINGS: tuple[str, ...] = ("utf-8", "cp949")
EXTENSIONS = {"json": ".json", "jsonl": ".jsonl", "xml": ".xml", "csv": ".csv"}
MANIFEST_SUFFIX = ".manifest.json"
FILE_PREFIX = "synth-"

# Follow-up probabilities per original (per receipt+statement pair for cancellations).
P_CORRECTION = 0.03
P_REISSUE = 0.01
P_CANCEL = 0.02
P_REEXPORT = 0.015  # per file

Key = tuple[str, str, str]
_SCRIPTED_FOLLOW_UPS = ("cancel_minimal", "correction", "cancel_full", "reissue")


@dataclass(frozen=True)
class SynthFile:
    """One export file: a personal-data-free name, its bytes, and the expected ingest outcome."""

    name: str
    data: bytes
    expected: dict[str, Any]


def natural_key(doc: Doc) -> Key:
    return (doc["institution"]["ykiho"], doc["document_type"], doc["document_no"])


def _doc_rng(seed: int) -> random.Random:
    return random.Random(f"silson-synth:{seed}:documents")


def generate_documents(count: int, seed: int) -> list[Doc]:
    """``count`` valid standard documents (originals only: version 1 or an export timestamp,
    all ``active``, every natural key distinct), so they can be ingested in any order."""
    factory = DocumentFactory(_doc_rng(seed))
    out: list[Doc] = []
    while len(out) < count:
        out.extend(factory.encounter().docs)
    return out[:count]


@dataclass
class _Pending:
    """A follow-up version waiting until every key in ``requires`` was written in an earlier file."""

    doc: Doc
    requires: set[Key]
    due: int | None = None


@dataclass
class _Stored:
    versions: dict[int, str] = field(default_factory=dict)  # version → content_hash

    @property
    def max(self) -> int:
        return max(self.versions)


class _Planner:
    def __init__(
        self, count: int, seed: int, fmt: str | None, encoding: str | None, invalid_rate: float
    ) -> None:
        if count < 0:
            raise ValueError("count must be ≥ 0")
        if fmt is not None and fmt not in FORMATS:
            raise ValueError("format must be json, jsonl, xml or csv")
        if encoding is not None and encoding not in ENCODINGS:
            raise ValueError("encoding must be utf-8 or cp949")
        if not 0.0 <= invalid_rate <= 1.0 or math.isnan(invalid_rate):
            raise ValueError("invalid_rate must be between 0 and 1")
        self.count = count
        self.fmt = fmt
        self.encoding = encoding
        self.invalid_rate = invalid_rate
        self.factory = DocumentFactory(_doc_rng(seed))
        self.rng = random.Random(f"silson-synth:{seed}:files")
        self.phase = self.rng.random()  # error diffusion: exactly ⌊rate·n⌋ or ⌈rate·n⌉ of n files mutated
        self.buffer: collections.deque[Doc] = collections.deque()
        self.pending: list[_Pending] = []
        self.reexports: list[tuple[int, list[Doc], str, str]] = []
        self.written: set[Key] = set()  # keys written in a completed file (follow-ups may follow)
        self.store: dict[Key, _Stored] = {}
        self.file_hashes: set[str] = set()
        self.recent: dict[str, collections.deque[Doc]] = collections.defaultdict(
            lambda: collections.deque(maxlen=64)
        )
        self.emitted = 0
        self.index = 0
        self.groups = 0
        self.plain_files = 0
        self.reexports_made = 0
        self.rules_used: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ choices

    def _choose_format(self) -> str:
        if self.fmt is not None:
            return self.fmt
        if self.index < 2 * len(FORMATS):  # every format early, so small corpora have all of them
            return FORMATS[self.index % len(FORMATS)]
        return self.rng.choices(FORMATS, (40, 20, 20, 20))[0]

    def _choose_encoding(self) -> str:
        """Writer encoding: forced one, else UTF-8 (some with BOM) or CP949."""
        if self.encoding is not None:
            return self.encoding
        if self.index < 2 * len(FORMATS):
            return ENCODINGS[(self.index // len(FORMATS)) % 2]
        r = self.rng.random()
        return "cp949" if r < 0.3 else ("utf-8-sig" if r < 0.4 else "utf-8")

    def _choose_size(self, fmt: str) -> int:
        r = self.rng
        if fmt == "json":
            return 1 if r.random() < 0.6 else r.randrange(2, 6)
        if fmt == "jsonl":
            return r.randrange(2, 31)
        if fmt == "xml":
            return r.randrange(1, 6)
        return r.randrange(1, 13)

    def _mutation_due(self) -> bool:
        if self.invalid_rate <= 0:
            return False
        # Counted over the files that are not re-exports (those copy a valid file and stay valid).
        i = self.plain_files
        self.plain_files += 1
        return math.floor((i + 1) * self.invalid_rate + self.phase) > math.floor(
            i * self.invalid_rate + self.phase
        )

    # ------------------------------------------------------------------ document supply

    def _refill(self) -> None:
        enc = self.factory.encounter()
        rng = self.rng
        for group in enc.cancel_groups:
            docs = [enc.docs[i] for i in group]
            keys = {natural_key(d) for d in docs}
            self.groups += 1
            # The first groups get each kind of follow-up, so small corpora show all of them.
            scripted = (
                _SCRIPTED_FOLLOW_UPS[self.groups - 1] if self.groups <= len(_SCRIPTED_FOLLOW_UPS) else None
            )
            r = rng.random()
            if scripted in ("cancel_minimal", "cancel_full") or (scripted is None and r < P_CANCEL):
                minimal = scripted == "cancel_minimal" or (scripted is None and rng.random() < 0.5)
                for d in docs:
                    self.pending.append(_Pending(builders.cancellation(d, rng, minimal=minimal), set(keys)))
                continue
            for d in docs:
                r = rng.random()
                if scripted == "correction":
                    r = 0.0
                elif scripted == "reissue":
                    r = P_CORRECTION
                if r < P_CORRECTION:
                    self.pending.append(_Pending(builders.correction(d, rng), {natural_key(d)}))
                elif r < P_CORRECTION + P_REISSUE:
                    self.pending.append(_Pending(builders.correction(d, rng, reissue=True), {natural_key(d)}))
        self.buffer.extend(enc.docs)

    def _take_fresh(self, doc_type: str | None) -> Doc:
        """Next fresh document (of ``doc_type`` for CSV); other types stay queued in order."""
        for _ in range(1000):
            if not self.buffer:
                self._refill()
            if doc_type is None:
                return self.buffer.popleft()
            for i, d in enumerate(self.buffer):
                if d["document_type"] == doc_type:
                    del self.buffer[i]
                    return d
            self._refill()
        raise RuntimeError("generator produced no document of the requested type")

    # ------------------------------------------------------------------ one file

    def files(self) -> Iterator[SynthFile]:
        while self.emitted < self.count:
            reexport = self._due_reexport()
            if reexport is not None:
                yield reexport
                continue
            yield self._next_file()

    def _due_reexport(self) -> SynthFile | None:
        for n, (due, docs, fmt, enc) in enumerate(self.reexports):
            if due <= self.index:
                del self.reexports[n]
                if len(docs) > self.count - self.emitted:
                    return None
                return self._finish(docs, fmt, enc, fresh=set(), mutation=None, reexport=True)
        return None

    def _next_file(self) -> SynthFile:
        fmt = self._choose_format()
        enc = self._choose_encoding()
        size = min(self._choose_size(fmt), self.count - self.emitted)
        mutation = self._choose_mutation(fmt) if self._mutation_due() else None
        doc_type: str | None = None
        conflict: Doc | None = None
        if mutation == mutations.CONFLICT_RULE:
            conflict = self._conflict_candidate(fmt)
            if conflict is None:
                mutation = "R-002"
            else:
                size -= 1
                if fmt == "csv":
                    doc_type = conflict["document_type"]
        records: list[Doc] = []
        for p in [p for p in self.pending if p.due is not None and p.due <= self.index]:
            if len(records) >= size:
                break
            if fmt == "csv":
                doc_type = doc_type or p.doc["document_type"]
                if p.doc["document_type"] != doc_type:
                    continue
            records.append(p.doc)
            self.pending.remove(p)
        fresh_from = len(records)
        while len(records) < size:
            d = self._take_fresh(doc_type)
            if fmt == "csv":
                doc_type = d["document_type"]
            records.append(d)
        fresh = set(range(fresh_from, len(records)))
        if conflict is not None:
            at = self.rng.randrange(len(records) + 1)
            records.insert(at, mutations.conflicting_copy(conflict))
            fresh = {i + 1 if i >= at else i for i in fresh}
            return self._finish(records, fmt, enc, fresh=fresh, mutation=(mutations.CONFLICT_RULE, at))
        if mutation is not None and mutation not in mutations.BYTE_RULES:
            applied = self._apply_doc_mutation(mutation, records, fresh, fmt)
            if applied is not None:
                return self._finish(applied[0], fmt, enc, fresh=fresh, mutation=(applied[1], applied[2]))
            mutation = "R-002"
        return self._finish(records, fmt, enc, fresh=fresh, mutation=(mutation, None) if mutation else None)

    def _choose_mutation(self, fmt: str) -> str:
        rules = [m.rule for m in mutations.DOC_MUTATIONS if fmt in m.formats]
        rules += [r for r, formats in mutations.BYTE_RULES.items() if fmt in formats]
        rules.append(mutations.CONFLICT_RULE)
        # The least used rule first: every known violation shows up even in small corpora.
        least = min(self.rules_used[r] for r in rules)
        rule = self.rng.choice([r for r in rules if self.rules_used[r] == least])
        self.rules_used[rule] += 1
        return rule

    def _conflict_candidate(self, fmt: str) -> Doc | None:
        types = [t for t in sorted(self.recent) if self.recent[t]]
        if not types:
            return None
        return self.rng.choice(self.recent[self.rng.choice(types)])

    def _apply_doc_mutation(self, rule: str, records: list[Doc], fresh: set[int],
                            fmt: str) -> tuple[list[Doc], str, int] | None:  # fmt: skip
        """Mutate one fresh record with ``rule`` (or, if none fits, another document rule)."""
        order = [m for m in mutations.DOC_MUTATIONS if m.rule == rule]
        others = [m for m in mutations.DOC_MUTATIONS if m.rule != rule and fmt in m.formats]
        self.rng.shuffle(others)
        others.sort(key=lambda m: self.rules_used[m.rule])  # stable: least used first, random among equals
        for m in order + others:
            candidates = [i for i in sorted(fresh) if m.applies(records[i])]
            if candidates:
                i = self.rng.choice(candidates)
                out = list(records)
                out[i] = mutations.mutate_document(m, records[i], self.rng)
                if m.rule != rule:
                    self.rules_used[rule] -= 1
                    self.rules_used[m.rule] += 1
                return out, m.rule, i
        return None

    def _finish(self, records: list[Doc], fmt: str, enc: str, *, fresh: set[int],
                mutation: tuple[str, int | None] | None, reexport: bool = False) -> SynthFile:  # fmt: skip
        name = f"{FILE_PREFIX}{self.index + 1:06d}{EXTENSIONS[fmt]}"
        data = write_export(records, format=fmt, encoding=enc)
        if mutation is not None and mutation[0] in mutations.BYTE_RULES:
            data = mutations.mutate_bytes(mutation[0], data)
        expected: dict[str, Any] = {
            "file": name,
            "format": fmt,
            "encoding": "cp949" if enc == "cp949" else "utf-8",
            "bom": enc == "utf-8-sig",
            "records": len(records),
            "document_types": sorted({d["document_type"] for d in records}),
        }
        expected.update(self._simulate(records, data, mutation))
        if reexport:
            expected["reexport"] = True
        # Follow-ups of keys written now become due a few files later (never in this file).
        for d in records:
            self.written.add(natural_key(d))
        for p in self.pending:
            if p.due is None and p.requires <= self.written:
                p.due = self.index + 1 + self.rng.randrange(0, 15)
        if not reexport and mutation is None and (self.rng.random() < P_REEXPORT or self.reexports_made < 2):
            same = self.reexports_made == 0 or (self.reexports_made > 1 and self.rng.random() < 0.5)
            self.reexports_made += 1
            refmt = (
                fmt if same or self.fmt or len(expected["document_types"]) > 1 else self.rng.choice(FORMATS)
            )
            self.reexports.append((self.index + 1 + self.rng.randrange(1, 20), list(records), refmt,
                                   enc if same else self._choose_encoding()))  # fmt: skip
        self.emitted += len(records)
        self.index += 1
        return SynthFile(name, data, expected)

    # ------------------------------------------------------------------ expected outcome

    def _simulate(
        self, records: list[Doc], data: bytes, mutation: tuple[str, int | None] | None
    ) -> dict[str, Any]:
        """exports.md §4 precedence over the simulated store (files processed in name order)."""
        if mutation is not None:
            rule, record = mutation
            return {"outcome": "quarantined", "rule": rule, "record": record, "versions_stored": 0}
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.file_hashes:
            return {"outcome": "duplicate", "rule": None, "record": None, "versions_stored": 0}
        new_keys = higher = 0
        staged: dict[Key, _Stored] = {}
        for d in records:
            key = natural_key(d)
            stored = staged.get(key) or self.store.get(key)
            h = content_hash(d)
            v = int(d["version"])
            if stored is None:
                new_keys += 1
                staged[key] = _Stored({v: h})
            elif stored.versions.get(v) == h:
                continue  # no-op record
            elif v > stored.max:
                higher += 1
                staged[key] = _Stored({**stored.versions, v: h})
            else:  # pragma: no cover - the planner never makes unintended conflicts
                raise AssertionError("unplanned version conflict in the synthetic corpus")
        self.store.update(staged)
        self.file_hashes.add(digest)
        for d in records:
            if d["status"] == "active" and natural_key(d) in staged:
                self.recent[d["document_type"]].append(d)
        if not new_keys and not higher:
            outcome = "duplicate"
        elif higher:
            outcome = "superseded"
        else:
            outcome = "accepted"
        return {"outcome": outcome, "rule": None, "record": None, "versions_stored": new_keys + higher}


def generate(count: int, seed: int, *, format: str | None = None, encoding: str | None = None,
             invalid_rate: float = 0.0) -> Iterator[SynthFile]:  # fmt: skip
    """Files holding ``count`` records in total (corrections, cancellations and re-exports included),
    in processing order. ``format``/``encoding`` force one serialisation; default is a mixture."""
    return _Planner(count, seed, format, encoding, invalid_rate).files()


def manifest_path(out_dir: Path) -> Path:
    """Where ``synth`` writes the manifest by default: ``DIR.manifest.json`` *beside* the output
    folder — never inside it, since that folder is often a watch folder, where a manifest would be
    one more (invalid) export file."""
    out_dir = Path(os.path.abspath(out_dir))
    return out_dir.parent / f"{out_dir.name}{MANIFEST_SUFFIX}"


def write_corpus(out_dir: Path, count: int, seed: int, *, format: str | None = None, encoding: str | None = None,
                 invalid_rate: float = 0.0, manifest: bool | Path = True,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the corpus into ``out_dir`` and the manifest to ``manifest`` (a path; ``True``: the
    default ``manifest_path(out_dir)``; ``False``: none).

    Each file appears under its final name only when complete (written under a dot-name, which
    watchers ignore, then renamed), in processing order. Returns the manifest."""
    out_dir = Path(out_dir)
    ensure_dir(out_dir)
    entries: list[dict[str, Any]] = []
    done = 0
    for f in generate(count, seed, format=format, encoding=encoding, invalid_rate=invalid_rate):
        _write_visible_when_complete(out_dir / f.name, f.data)
        entries.append(f.expected)
        done += f.expected["records"]
        if progress is not None:
            progress(done, count)
    fsync_dir(out_dir)  # once for all renames: a synthetic corpus need not survive power loss per file
    summary = collections.Counter(e["outcome"] for e in entries)
    result: dict[str, Any] = {
        "generator": "silson-agent synth",
        "seed": seed,
        "count": count,
        "format": format,
        "encoding": encoding,
        "invalid_rate": invalid_rate,
        "anchor_date": ANCHOR_DATE.isoformat(),
        "processing_order": "file name order",
        "summary": {k: summary.get(k, 0) for k in ("accepted", "duplicate", "superseded", "quarantined")},
        "files": entries,
    }
    if manifest is not False:
        target = manifest_path(out_dir) if manifest is True else Path(manifest)
        text = json.dumps(result, ensure_ascii=False, indent=2) + "\n"
        ensure_dir(target.parent)
        atomic_write(target, text.encode("utf-8"))
    return result


def _write_visible_when_complete(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
