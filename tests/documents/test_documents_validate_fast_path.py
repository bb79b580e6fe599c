"""The fast path of the field walk (validate.py) gives exactly what the full walk gives: the same
problems in the same order, the same canonical and clean documents, for valid and broken input."""

from __future__ import annotations

import copy
import random
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.documents import validate
from agent.documents.fields import FIELDS
from agent.synth import generate_documents

_FULL = {t: validate._compile_full_walk(fields, t, ()) for t, fields in FIELDS.items()}
_DOCS = generate_documents(120, seed=11)
_JUNK: list[Any] = [
    None, 0, -1, 10**30, 1.5, True, "", " ", "\u3000x", "x ", "a\x00", "a\nb", "\ud800", "1.50", "-0",
    "2024-02-30", "2024-01-01\n", "A00 0", [], [None], [{}], {}, {"x": 1}, "한\u0301", "x" * 1001,
    unicodedata.normalize("NFD", "한글"), "cancelled", "legacy_selective", "item", "rounding_adjustment",
]  # fmt: skip


def _walk(walks: dict[str, Any], doc: dict[str, Any], cancelled: bool, doc_type: str) -> tuple[Any, ...]:
    ctx = validate._Ctx(doc_type, cancelled)
    canon, clean = walks[doc_type](ctx, doc, "")
    return ctx.problems, repr(canon), repr(clean)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _mutate(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(_paths(doc)[1:])
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        if rng.random() < 0.2:
            del parent[path[-1]]
        elif rng.random() < 0.2 and isinstance(parent, dict):
            parent[rng.choice(["memo", "source", "selective", "dose", "code"])] = rng.choice(_JUNK)
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(_JUNK))
    return doc


@pytest.mark.parametrize("cancelled", [False, True])
def test_valid_documents_walk_the_same_as_the_full_walk(cancelled: bool) -> None:
    for doc in _DOCS:
        t = doc["document_type"]
        assert _walk(validate._WALKS, doc, cancelled, t) == _walk(_FULL, doc, cancelled, t)


def test_broken_documents_walk_the_same_as_the_full_walk() -> None:
    rng = random.Random(5)
    for _ in range(600):
        original = rng.choice(_DOCS)
        doc = _mutate(original, rng)
        cancelled = rng.random() < 0.2
        t = original["document_type"]
        assert _walk(validate._WALKS, doc, cancelled, t) == _walk(_FULL, doc, cancelled, t)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.sampled_from(_JUNK[:20]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(_DOCS) - 1), data=st.data())
def test_any_value_in_any_field_walks_the_same(index: int, data: st.DataObject) -> None:
    doc = copy.deepcopy(_DOCS[index])
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = data.draw(json_values)
    t = _DOCS[index]["document_type"]
    assert _walk(validate._WALKS, doc, False, t) == _walk(_FULL, doc, False, t)
