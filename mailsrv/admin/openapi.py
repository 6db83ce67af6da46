"""The OpenAPI 3.1 document of the admin API, built from the route table so the two cannot drift."""

from __future__ import annotations

from typing import Any

from mailsrv import __version__

_PROBLEM = {"description": "problem details (RFC 9457)", "content": {"application/problem+json": {
    "schema": {"$ref": "#/components/schemas/Problem"}}}}


def build(routes: list[tuple[str, str, str, dict[str, Any] | None]], prefix: str) -> dict[str, Any]:
    """``routes``: (method, path, summary, request body JSON schema or None)."""
    paths: dict[str, Any] = {}
    for method, path, summary, body in routes:
        op: dict[str, Any] = {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                "400": _PROBLEM, "401": _PROBLEM, "403": _PROBLEM, "404": _PROBLEM, "409": _PROBLEM,
            },
        }
        params = [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths.setdefault(prefix + path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailsrv admin API", "version": __version__,
                 "description": "Directory administration. Every request needs `Authorization: Bearer <token>` "
                                "for a token with the `admin` scope (`mailsrv token issue USER --scope admin`); "
                                "what it may change is the owner's administrator scope."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}}}},
        },
    }
