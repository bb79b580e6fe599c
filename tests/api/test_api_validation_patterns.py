"""Request-envelope patterns match the whole value (relay-api.md §4, §6): Python's ``$`` also
matches before a final newline, so ``"<uuid>\\n"`` once passed as a new request id — a replay that
slipped past the request-id memory — and ``claim_no``/``relay_id`` were stored with the newline."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agent.api.problems import ProblemError
from agent.api.relaysim import now_rfc3339
from agent.api.validation import validate_fetch, validate_search


def _search(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "sent_at": now_rfc3339(),
        "relay_id": "silson24-relay-01",
        "claim": {"claim_no": "CLM-20250314-000001", "consent_id": "CNS-20250314-0001"},
        "patient": {"name": "가상홍길동", "rrn": "850101-1990001"},
        "period": {"from": "2025-03-01", "to": "2025-03-31"},
    }
    body.update(over)
    return body


def _fetch(**over: Any) -> dict[str, Any]:
    body = {k: v for k, v in _search().items() if k not in ("patient", "period")}
    body["document_ids"] = ["doc_01JQ7Z8X9Y0A1B2C3D4E5F6G7H"]
    body.update(over)
    return body


def _rejected(fn, body) -> bool:
    try:
        fn(body)
    except ProblemError as exc:
        return exc.name == "validation-failed"
    return False


def test_the_valid_bodies_pass() -> None:
    validate_search(_search())
    validate_fetch(_fetch(), max_ids=100)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(request_id=b["request_id"] + "\n"),
        lambda b: b.update(sent_at=b["sent_at"] + "\n"),
        lambda b: b.update(relay_id="silson24-relay-01\n"),
        lambda b: b["claim"].update(claim_no="CLM-20250314-000001\n"),
        lambda b: b["claim"].update(consent_id="CNS-20250314-0001\n"),
        lambda b: b["patient"].update(rrn="850101-1990001\n"),
        lambda b: b["period"].update(to="2025-03-31\n"),
    ],
    ids=["request_id", "sent_at", "relay_id", "claim_no", "consent_id", "rrn", "period"],
)
def test_a_trailing_newline_is_a_validation_failure_in_search(mutate) -> None:
    body = _search()
    mutate(body)
    assert _rejected(validate_search, body)


def test_a_trailing_newline_in_a_document_id_is_a_validation_failure() -> None:
    body = _fetch(document_ids=["doc_01JQ7Z8X9Y0A1B2C3D4E5F6G7H\n"])
    assert _rejected(lambda b: validate_fetch(b, max_ids=100), body)


def test_the_300_s_clock_boundary_is_accepted_in_both_directions() -> None:
    """§4 rule 2: |sent_at − agent clock| ≤ 300 s, the boundary value 300 s accepted — with
    whole-second stamps read a fraction of a second after they were made, and with sub-second
    stamps (exact, less a transit grace for stamps in the past); 300.5 s and 301 s are refused."""
    import datetime as dt

    from agent.api.handlers import within_clock_window

    for frac_us in (0, 10_000, 500_000, 990_000):  # when in its second the agent reads it
        now = dt.datetime(2026, 11, 24, 9, 0, 0, frac_us, tzinfo=dt.UTC)
        whole = now.replace(microsecond=0)
        for offset, ok in ((-300, True), (-301, False), (300, True), (301, False), (0, True)):
            sent = whole + dt.timedelta(seconds=offset)
            assert within_clock_window(sent, now, whole=True) is ok, (frac_us, offset)
        read = now + dt.timedelta(milliseconds=20)  # a sub-second stamp, read 20 ms later
        for offset, ok in (
            (-299.7, True),
            (-300.0, True),
            (-300.5, False),
            (-301, False),
            (300.0, True),
            (300.5, False),
        ):
            sent = now + dt.timedelta(seconds=offset)
            assert within_clock_window(sent, read, whole=False) is ok, (frac_us, offset)


def test_only_a_registered_self_test_claim_makes_a_relay_request_a_selftest_record() -> None:
    """security.md §10 / S-37 with a running daemon: `acceptance` registers its claim number in the
    store; the relay cannot pass its own requests off as self-test ones by choosing such a claim."""
    import datetime as dt

    from agent.api.backend import SELFTEST_CLAIM_KEY, Backend
    from agent.clock import FakeClock, utc_iso

    clock = FakeClock()
    kv: dict[str, str] = {}

    class Store:
        def kv_get(self, key: str) -> str | None:
            return kv.get(key)

    backend = Backend(None, store=Store(), audit=None, keyring=None, clock=clock)  # type: ignore[arg-type]
    event = {
        "action": "documents.fetch",
        "claim_no": "ACPT-01RUN",
        "actor": {"kind": "relay", "relay_id": "r"},
    }
    assert backend.tag_event(event)["actor"]["kind"] == "relay"  # not registered
    kv[SELFTEST_CLAIM_KEY + "ACPT-01RUN"] = utc_iso(clock.now() + dt.timedelta(hours=1))
    assert backend.tag_event(event)["actor"]["kind"] == "selftest"
    other = dict(event, claim_no="CLM-1")
    assert backend.tag_event(other)["actor"]["kind"] == "relay"
    clock.advance(7200)  # the registration expired
    assert backend.tag_event(event)["actor"]["kind"] == "relay"
