"""A tiny route registry: Starlette routes plus the metadata the OpenAPI document is built from."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route, WebSocketRoute

__all__ = ["ApiRouter", "Endpoint", "openapi_document"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One documented operation."""

    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    status: int = 200
    public: bool = False
    query: tuple[str, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)


class ApiRouter:
    """Collects endpoints by decorator; :meth:`routes` turns them into Starlette routes."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []
        self.websockets: list[WebSocketRoute] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        body: type[BaseModel] | None = None,
        status: int = 200,
        public: bool = False,
        query: tuple[str, ...] = (),
        responses: dict[int, str] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.endpoints.append(
                Endpoint(method.upper(), path, fn, summary, self.tag, body, status, public, query, responses or {})
            )
            return fn

        return decorate

    def routes(self) -> list[Route | WebSocketRoute]:
        return [Route(e.path, e.handler, methods=[e.method], name=f"{e.method} {e.path}") for e in self.endpoints] + list(
            self.websockets
        )


def _params(path: str) -> list[str]:
    return re.findall(r"{([a-zA-Z_]+)(?::[a-z]+)?}", path)


def openapi_document(routers: list[ApiRouter], *, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for every registered endpoint; bodies come from the pydantic models."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    for router in routers:
        for e in router.endpoints:
            op: dict[str, Any] = {
                "summary": e.summary,
                "tags": [e.tag],
                "operationId": f"{e.method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', e.path).strip('_')}",
                "responses": {str(e.status): {"description": "success"}},
            }
            for code, text in e.responses.items():
                op["responses"][str(code)] = {"description": text}
            if not e.public and e.path.startswith("/api/"):
                op["security"] = [{"bearer": []}]
                op["responses"].setdefault("401", {"description": "missing or invalid API key"})
            params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in _params(e.path)]
            params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in e.query]
            if params:
                op["parameters"] = params
            if e.body is not None:
                schema = e.body.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas[name] = sub
                schemas[e.body.__name__] = schema
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{e.body.__name__}"}}},
                }
                op["responses"].setdefault("422", {"description": "validation error"})
            oa_path = re.sub(r"{([a-zA-Z_]+):[a-z]+}", r"{\1}", e.path)
            paths.setdefault(oa_path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailpipe", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
