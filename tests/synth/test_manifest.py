"""``invalid_rate`` and the manifest: every expected outcome is what the real reader and validator
give, replayed through an independent model of exports.md §4 and documents.md §9.2."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from agent.synth import SynthFile, generate, write_corpus
from agent.synth.mutations import BYTE_RULES, CONFLICT_RULE, DOC_MUTATIONS
from tests.synth.helpers import natural_key, read_back

ALL_RULES = {m.rule for m in DOC_MUTATIONS} | set(BYTE_RULES) | {CONFLICT_RULE}


def replay(files: list[SynthFile]) -> list[dict]:
    """Ingest in name order: quarantine on any error or version conflict, else duplicate /
    superseded / accepted by the first that applies (exports.md §4)."""
    stored: dict[tuple, dict[int, str]] = {}
    ingested: set[str] = set()
    outcomes = []
    for f in sorted(files, key=lambda f: f.name):
        back = read_back(f)
        errors = sorted(back.errors, key=str)
        digest = hashlib.sha256(f.data).hexdigest()
        if errors:
            outcomes.append({"outcome": "quarantined", "rule": errors[0][0], "record": errors[0][1]})
            continue
        if digest in ingested:
            outcomes.append({"outcome": "duplicate", "rule": None, "record": None})
            continue
        staged = {k: dict(v) for k, v in stored.items()}
        new = higher = 0
        conflict = None
        for index, doc, v in back.records:
            versions = staged.setdefault(natural_key(doc), {})
            version = doc["version"]
            if versions.get(version) == v.content_hash:
                continue
            if version in versions or (versions and version < max(versions)):
                conflict = index
                break
            higher += bool(versions)
            new += not versions
            versions[version] = v.content_hash
        if conflict is not None:
            outcomes.append({"outcome": "quarantined", "rule": CONFLICT_RULE, "record": conflict})
            continue
        stored = staged
        ingested.add(digest)
        outcome = "superseded" if higher else ("accepted" if new else "duplicate")
        outcomes.append({"outcome": outcome, "rule": None, "record": None})
    return outcomes


@pytest.mark.parametrize(("seed", "rate"), [(1, 0.3), (2, 0.5), (3, 0.05)])
def test_manifest_outcomes_match_an_independent_replay(seed: int, rate: float) -> None:
    files = list(generate(700, seed, invalid_rate=rate))
    expected = [{k: f.expected[k] for k in ("outcome", "rule", "record")} for f in files]
    assert replay(files) == expected


@pytest.mark.parametrize("seed", [4, 5])
def test_each_quarantined_file_yields_exactly_its_rule_at_its_record(seed: int) -> None:
    files = list(generate(1500, seed, invalid_rate=0.4))
    quarantined = [f for f in files if f.expected["outcome"] == "quarantined"]
    assert quarantined
    for f in quarantined:
        back = read_back(f)
        rule, record = f.expected["rule"], f.expected["record"]
        if rule == CONFLICT_RULE:
            assert back.errors == set()  # valid on its own: the conflict is with the store (§9.2)
            assert record is not None and 0 <= record < len(back.records)
        else:
            assert back.errors == {(rule, record)}, f.expected
        if rule in BYTE_RULES:
            assert record is None


def test_every_known_violation_appears_in_a_large_enough_corpus() -> None:
    rules = {f.expected["rule"] for f in generate(2500, 6, invalid_rate=0.5)}
    assert ALL_RULES <= rules


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.33, 1.0])
def test_the_fraction_of_mutated_files_is_the_invalid_rate(rate: float) -> None:
    files = list(generate(600, 8, invalid_rate=rate))
    bad = sum(f.expected["outcome"] == "quarantined" for f in files)
    # Re-exports are copies of valid files and never mutated, so they are counted separately.
    n = sum(not f.expected.get("reexport") for f in files)
    assert math.floor(rate * n) <= bad <= math.ceil(rate * n)


def test_write_corpus_writes_every_file_and_a_manifest(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    manifest = write_corpus(out, 250, 9, invalid_rate=0.2)
    on_disk = json.loads((tmp_path / "corpus.manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    files = list(generate(250, 9, invalid_rate=0.2))
    assert [e["file"] for e in manifest["files"]] == [f.name for f in files]
    for f in files:
        assert (out / f.name).read_bytes() == f.data
        assert (out / f.name).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in files)  # nothing else in it
    assert sum(manifest["summary"].values()) == len(files)
    assert manifest["summary"]["quarantined"] > 0


def test_write_corpus_can_leave_out_the_manifest(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", 20, 1, manifest=False)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
