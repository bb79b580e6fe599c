"""Deterministic synthetic data generator (cli.md ``synth``): valid, linked, obviously fake documents.

Public API::

    generate(count, seed, *, format=None, encoding=None, invalid_rate=0.0) -> Iterator[SynthFile]
    generate_documents(count, seed) -> list[dict]        # plain valid originals, any order
    write_corpus(out_dir, count, seed, ..., manifest=True, progress=None) -> dict  # the manifest

Layout: `identities` (synthetic people, institutions, codes), `builders` (documents of one
encounter, corrections, cancellations), `mutations` (known violations), `corpus` (files, outcomes).
"""

from __future__ import annotations

from agent.synth.builders import ANCHOR_DATE
from agent.synth.corpus import (
    MANIFEST_SUFFIX,
    SynthFile,
    generate,
    generate_documents,
    manifest_path,
    write_corpus,
)

__all__ = [
    "ANCHOR_DATE",
    "MANIFEST_SUFFIX",
    "SynthFile",
    "generate",
    "generate_documents",
    "manifest_path",
    "write_corpus",
]
