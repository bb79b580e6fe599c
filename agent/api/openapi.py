"""OpenAPI 3.1 description of the public port, generated from the app's route table.

``openapi_document()`` builds the document from ``agent.api.app.ROUTES``, the problem table of
``agent.api.problems`` and the request/response schemas below (relay-api.md §4–§7). It is served
only by the admin listener; ``docs/relay-api.openapi.json`` is its committed copy, kept equal by a
test. The public port never serves it (§2.1).
"""

from __future__ import annotations

import json
from typing import Any

from agent import API_REVISION, __version__
from agent.api.app import FETCH, HEALTH, ROUTES, SEARCH
from agent.api.problems import ERROR_CODES, PROBLEMS, TYPE_PREFIX
from agent.api.validation import DOCUMENT_TYPES, FORMATS

_TOKEN = {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$"}
_DATE = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_TIMESTAMP = {
    "type": "string",
    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?Z$",
}
_REQUEST_ID = {
    "type": "string",
    "description": "UUID v4 (8-4-4-4-12) or ULID (26 Crockford base32)",
    "pattern": "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
    "|[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25})$",
}
_DOC_ID = {"type": "string", "pattern": "^doc_[0-9A-HJKMNP-TV-Z]{26}$"}
_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

_ENVELOPE = {
    "request_id": _REQUEST_ID,
    "sent_at": _TIMESTAMP,
    "relay_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    "claim": {
        "type": "object",
        "additionalProperties": False,
        "required": ["claim_no", "consent_id"],
        "properties": {"claim_no": _TOKEN, "consent_id": _TOKEN},
    },
}

SCHEMAS: dict[str, Any] = {
    "SearchRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["request_id", "sent_at", "relay_id", "claim", "patient", "period"],
        "properties": {
            **_ENVELOPE,
            "patient": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "rrn"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 100},
                    "rrn": {"type": "string", "pattern": "^[0-9]{6}-?[0-9]{7}$"},
                },
            },
            "period": {
                "type": "object",
                "additionalProperties": False,
                "required": ["from", "to"],
                "properties": {"from": _DATE, "to": _DATE},
            },
            "document_types": {
                "type": "array",
                "minItems": 1,
                "maxItems": 4,
                "uniqueItems": True,
                "items": {"type": "string", "enum": list(DOCUMENT_TYPES)},
            },
        },
    },
    "FetchRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["request_id", "sent_at", "relay_id", "claim", "document_ids"],
        "properties": {
            **_ENVELOPE,
            "document_ids": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "uniqueItems": True,
                "items": _DOC_ID,
            },
            "format": {"type": "string", "enum": list(FORMATS), "default": "standard"},
        },
    },
    "SearchResponse": {
        "type": "object",
        "required": ["request_id", "claim_no", "institution_code", "generated_at", "count", "documents"],
        "properties": {
            "request_id": {"type": "string"},
            "claim_no": {"type": "string"},
            "institution_code": {"type": "string"},
            "generated_at": _TIMESTAMP,
            "count": {"type": "integer", "minimum": 0},
            "documents": {"type": "array", "items": {"$ref": "#/components/schemas/DocumentSummary"}},
        },
    },
    "DocumentSummary": {
        "type": "object",
        "required": [
            "id",
            "type",
            "document_no",
            "version",
            "issued_on",
            "care_period",
            "total_amount_krw",
            "institution_code",
            "identity_match",
        ],
        "properties": {
            "id": _DOC_ID,
            "type": {"type": "string", "enum": list(DOCUMENT_TYPES)},
            "document_no": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "issued_on": _DATE,
            "care_period": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["start", "end"],
                        "properties": {"start": _DATE, "end": _DATE},
                    },
                ]
            },
            "total_amount_krw": {"type": ["integer", "null"]},
            "institution_code": {"type": "string"},
            "identity_match": {"type": "string", "enum": ["rrn", "rrn_prefix"]},
        },
    },
    "FetchResponse": {
        "type": "object",
        "required": [
            "request_id",
            "claim_no",
            "institution_code",
            "format",
            "generated_at",
            "count",
            "documents",
        ],
        "properties": {
            "request_id": {"type": "string"},
            "claim_no": {"type": "string"},
            "institution_code": {"type": "string"},
            "format": {"type": "string", "enum": list(FORMATS)},
            "generated_at": _TIMESTAMP,
            "count": {"type": "integer", "minimum": 0},
            "documents": {"type": "array", "items": {"$ref": "#/components/schemas/FetchedDocument"}},
        },
    },
    "FetchedDocument": {
        "type": "object",
        "required": ["id", "type", "version", "media_type", "content_base64", "content_sha256", "signature"],
        "properties": {
            "id": _DOC_ID,
            "type": {"type": "string", "enum": list(DOCUMENT_TYPES)},
            "version": {"type": "integer", "minimum": 1},
            "media_type": {"type": "string"},
            "content_base64": {"type": "string", "contentEncoding": "base64"},
            "content_sha256": _HEX64,
            "signature": {
                "type": "object",
                "required": ["alg", "kid", "value"],
                "properties": {
                    "alg": {"const": "ES256"},
                    "kid": _HEX64,
                    "value": {"type": "string", "pattern": "^[A-Za-z0-9_-]{86}$"},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": [
            "status",
            "agent_version",
            "api_version",
            "api_revision",
            "institution_code",
            "server_time",
            "clock_tolerance_s",
            "storage",
            "audit_log",
            "ingest",
            "signing_key_id",
        ],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
            "agent_version": {"type": "string"},
            "api_version": {"const": "v1"},
            "api_revision": {"type": "integer", "minimum": 0},
            "institution_code": {"type": "string"},
            "server_time": _TIMESTAMP,
            "clock_tolerance_s": {"type": "integer"},
            "storage": {"type": "string", "enum": ["ok", "unavailable"]},
            "audit_log": {"type": "string", "enum": ["ok", "unavailable"]},
            "ingest": {"type": "string", "enum": ["ok", "degraded"]},
            "signing_key_id": _HEX64,
        },
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail", "request_id"],
        "properties": {
            "type": {"type": "string", "enum": [TYPE_PREFIX + name for name in PROBLEMS]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "request_id": {"type": ["string", "null"]},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["pointer", "code"],
                    "properties": {
                        "pointer": {"type": "string"},
                        "code": {"type": "string", "enum": list(ERROR_CODES)},
                    },
                },
            },
        },
    },
}

_STATUS_TEXT = {
    400: "Malformed request body",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Request does not satisfy the contract",
    429: "Too many requests",
    500: "Internal error, nothing released",
    503: "Unavailable or overloaded",
}

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds (integer >= 1)", "schema": {"type": "integer", "minimum": 1}}
}


def _problem_response(status: int) -> dict[str, Any]:
    names = [name for name, (st, _, _) in PROBLEMS.items() if st == status]
    resp: dict[str, Any] = {
        "description": _STATUS_TEXT[status] + " (" + ", ".join(names) + ")",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in (429, 503):
        resp["headers"] = _RETRY_AFTER
    if status == 405:
        resp["headers"] = {"Allow": {"schema": {"type": "string"}}}
    return resp


def _operation(path: str, method: str) -> dict[str, Any]:
    if path == HEALTH:
        body_schema = {"$ref": "#/components/schemas/Health"}
        return {
            "operationId": "health",
            "summary": "Liveness and readiness (no personal data, not audited)",
            "responses": {
                "200": {
                    "description": "The agent can serve documents",
                    "content": {"application/json": {"schema": body_schema}},
                },
                "429": _problem_response(429),
                "503": {
                    "description": "Storage or audit log unavailable (health body), or overloaded (problem)",
                    "headers": _RETRY_AFTER,
                    "content": {
                        "application/json": {"schema": body_schema},
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}},
                    },
                },
            },
        }
    name = "search" if path == SEARCH else "fetch"
    request = "SearchRequest" if path == SEARCH else "FetchRequest"
    response = "SearchResponse" if path == SEARCH else "FetchResponse"
    statuses = (
        [400, 403, 404, 409, 413, 415, 422, 429, 500, 503]
        if path == FETCH
        else [400, 403, 409, 413, 415, 422, 429, 500, 503]
    )
    responses: dict[str, Any] = {
        "200": {
            "description": "Success",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}},
        }
    }
    for status in statuses:
        responses[str(status)] = _problem_response(status)
    return {
        "operationId": name,
        "summary": "Search a patient's documents in a claim"
        if name == "search"
        else "Fetch signed documents listed by a search of the same claim",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
        },
        "responses": responses,
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the three public routes (generated, deterministic)."""
    paths = {path: {method.lower(): _operation(path, method)} for path, (method, _) in ROUTES.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "silson-agent relay API",
            "version": f"v1 (agent {__version__}, revision {API_REVISION})",
            "description": "Public mutual-TLS port of silson-agent (relay-api.md). Every response carries "
            "Cache-Control: no-store and X-Content-Type-Options: nosniff.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def openapi_json() -> str:
    """The committed form of ``docs/relay-api.openapi.json``."""
    return json.dumps(openapi_document(), ensure_ascii=False, indent=2, sort_keys=False) + "\n"
