"""RFC 9457 problem documents of the public port (relay-api.md §7).

The table below is the single source of the problem ``type`` names, HTTP statuses, fixed titles
and fixed ``detail`` texts. ``detail`` is chosen here, never built from the request, so no value
a relay sent (names, RRNs, ids, claim numbers) can be echoed into an error (security.md §8).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

TYPE_PREFIX = "urn:silson-agent:problem:"

# name -> (status, title, detail)
PROBLEMS: dict[str, tuple[int, str, str]] = {
    "bad-request": (400, "Malformed request body", "The request body is not a well-formed JSON object."),
    "relay-not-allowed": (403, "Relay is not allowed", "The relay id is not enrolled for this agent."),
    "claim-not-bound": (
        403,
        "No search binds this claim",
        "Fetch requires a live search binding for this claim and consent.",
    ),
    "not-found": (404, "No such resource", "The requested resource does not exist."),
    "document-not-found": (
        404,
        "Document not available",
        "One or more requested documents are not available in this claim.",
    ),
    "method-not-allowed": (405, "Method not allowed", "The method is not allowed for this resource."),
    "replay-detected": (409, "Request id already used", "The request id has already been used."),
    "claim-conflict": (
        409,
        "Claim is bound to another subject or consent",
        "The claim is already bound to another subject or consent.",
    ),
    "payload-too-large": (413, "Request body too large", "The request body exceeds the size limit."),
    "unsupported-media-type": (
        415,
        "Unsupported media type",
        "The request content type or content encoding is not supported.",
    ),
    "validation-failed": (
        422,
        "Request body does not match the schema",
        "One or more members are missing or invalid.",
    ),
    "clock-skew": (
        422,
        "Request timestamp outside the accepted window",
        "The request timestamp is outside the accepted window.",
    ),
    "too-many-documents": (
        422,
        "Too many documents requested",
        "The request lists more documents than allowed.",
    ),
    "too-many-results": (
        422,
        "Search matches too many documents",
        "The search matches too many documents; narrow the period.",
    ),
    "response-too-large": (
        422,
        "Response would be too large",
        "The response would exceed the size limit; fetch fewer documents.",
    ),
    "rate-limited": (429, "Too many requests", "The request rate limit has been exceeded."),
    "internal-error": (500, "Internal error", "The request could not be processed."),
    "overloaded": (503, "Agent is busy", "The agent is processing too many requests."),
    "audit-unavailable": (503, "Audit log unavailable", "The audit log is unavailable."),
    "storage-unavailable": (503, "Document store unavailable", "The document store is unavailable."),
}

ERROR_CODES = (
    "missing",
    "type",
    "format",
    "pattern",
    "enum",
    "range",
    "too-long",
    "duplicate",
    "unknown-field",
)

PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One ``errors[]`` entry: a JSON pointer to a contract member and a fixed code."""

    pointer: str
    code: str


class ProblemError(Exception):
    """Raised inside request handling to answer with a problem document.

    ``reason`` goes to the audit record only (e.g. ``integrity``), never to the client.
    """

    def __init__(
        self,
        name: str,
        *,
        errors: list[FieldError] | None = None,
        retry_after: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(name)
        if name not in PROBLEMS:
            raise AssertionError(f"unknown problem type {name}")
        self.name = name
        self.errors = errors or []
        self.retry_after = retry_after
        self.reason = reason

    @property
    def status(self) -> int:
        return PROBLEMS[self.name][0]


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def problem_type(name: str) -> str:
    return TYPE_PREFIX + name


def problem_body(name: str, request_id: str | None, errors: list[FieldError] | None = None) -> bytes:
    """The JSON bytes of a problem document; ``errors`` appears only for validation-failed."""
    status, title, detail = PROBLEMS[name]
    doc: dict[str, Any] = {
        "type": problem_type(name),
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if name == "validation-failed":
        doc["errors"] = [{"pointer": e.pointer, "code": e.code} for e in (errors or [])]
    return _JSON.encode(doc).encode("utf-8")
