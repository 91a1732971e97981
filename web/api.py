"""A tiny route registry: Starlette routes plus the metadata the OpenAPI document is built from.

Each operation declares its body model, its typed query parameters (``web.params.Param``), its
success response (a pydantic model, or :class:`Raw` for non-JSON content), the statuses it may
answer and its body cap; :func:`openapi_document` turns that into OpenAPI 3.1 with a schema for
every response (errors share the ``Error`` schema), and :meth:`ApiRouter.routes` wraps every
route in ``web.body_limit.BodyLimit`` with its cap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import Route, WebSocketRoute

from web.body_limit import DEFAULT_MAX_BODY, BodyLimit
from web.org_only import OrgOnly
from web.params import ID, Param
from web.schemas import Error

__all__ = ["ACTING_USER", "ApiRouter", "Endpoint", "Raw", "WebSocketDoc", "openapi_document"]

ACTING_USER = Param.text("X-Mailpipe-User", max_length=64, pattern=r"^[^\x00-\x20\x7f]{1,64}$", description=(
    "the acting user: only mailboxes they own, are a member of or a delegate of are visible, and actions are recorded "
    "as theirs; without it the API key acts for the whole organization"))


@dataclass(frozen=True, slots=True)
class Raw:
    """A non-JSON response body (HTML page, CSV, image, metrics text) or a JSON one without a model."""

    media_type: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


Schema = type[BaseModel] | Raw | None
Reply = str | tuple[str, Schema]


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
    query: tuple[Param, ...] = ()
    responses: dict[int, Reply] = field(default_factory=dict)
    response: Schema = None
    path_params: dict[str, Param] = field(default_factory=dict)
    max_body: int = DEFAULT_MAX_BODY
    org_only: bool = False  # acts for the whole organization: refused (403) with X-Mailpipe-User


@dataclass(frozen=True, slots=True)
class WebSocketDoc:
    """A websocket route as the OpenAPI document shows it (a GET with ``x-websocket``)."""

    path: str
    summary: str
    tag: str
    query: tuple[Param, ...] = ()


class ApiRouter:
    """Collects endpoints by decorator; :meth:`routes` turns them into Starlette routes."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []
        self.websockets: list[WebSocketRoute] = []
        self.websocket_docs: list[WebSocketDoc] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        body: type[BaseModel] | None = None,
        status: int = 200,
        public: bool = False,
        query: tuple[Param | str, ...] = (),
        responses: dict[int, Reply] | None = None,
        response: Schema = None,
        path_params: dict[str, Param] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        org_only: bool = False,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        params = tuple(q if isinstance(q, Param) else Param.text(q) for q in query)

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.endpoints.append(Endpoint(method.upper(), path, fn, summary, self.tag, body, status, public, params,
                                           responses or {}, response, path_params or {}, max_body, org_only))
            return fn

        return decorate

    def websocket(self, path: str, *, summary: str, query: tuple[Param, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.websockets.append(WebSocketRoute(path, fn))
            self.websocket_docs.append(WebSocketDoc(path, summary, self.tag, query))
            return fn

        return decorate

    def routes(self) -> list[Route | WebSocketRoute]:
        out: list[Route | WebSocketRoute] = []
        for e in self.endpoints:
            route = Route(e.path, e.handler, methods=[e.method], name=f"{e.method} {e.path}")
            route.app = BodyLimit(route.app, e.max_body)
            if e.org_only:
                route.app = OrgOnly(route.app)
            out.append(route)
        return out + list(self.websockets)


def _params(path: str) -> list[str]:
    return re.findall(r"{([a-zA-Z_]+)(?::[a-z]+)?}", path)


def _operation_id(method: str, path: str) -> str:
    return f"{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}"


_Refs: TypeAlias = dict[tuple[type[BaseModel], JsonSchemaMode], dict[str, Any]]  # (model, mode) → its $ref


class _Schemas:
    """Collects every model first, then names them once (pydantic disambiguates equal class names)."""

    def __init__(self) -> None:
        self.wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Error, "serialization")]

    def want(self, model: type[BaseModel], mode: JsonSchemaMode) -> None:
        if (model, mode) not in self.wanted:
            self.wanted.append((model, mode))

    def build(self) -> tuple[_Refs, dict[str, Any]]:
        refs, top = models_json_schema(self.wanted, ref_template="#/components/schemas/{model}")
        return {key: refs[key] for key in self.wanted}, top.get("$defs", {})


def _content(schema: Schema, refs: _Refs) -> dict[str, Any] | None:
    if schema is None:
        return None
    if isinstance(schema, Raw):
        return {schema.media_type: {"schema": schema.schema}}
    return {"application/json": {"schema": refs[(schema, "serialization")]}}


def _reply(description: str, schema: Schema, refs: _Refs) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    content = _content(schema, refs)
    if content is not None:
        out["content"] = content
    return out


def _statuses(e: Endpoint) -> dict[int, tuple[str, Schema]]:
    """Every status the operation may answer, with its schema: declared ones plus the generic errors."""
    out: dict[int, tuple[str, Schema]] = {e.status: ("success", e.response)}
    for code, reply in e.responses.items():
        text, schema = reply if isinstance(reply, tuple) else (reply, e.response if code < 400 else Error)
        out[code] = (text, schema)
    if not e.public and e.path.startswith("/api/"):
        out.setdefault(401, ("missing or invalid API key", Error))
        # X-Mailpipe-User: malformed → 422; what that user may not see (or act for) → 404
        out.setdefault(404, ("not found, or not visible to the acting user (X-Mailpipe-User)", Error))
        out.setdefault(422, ("validation error (details.errors names each field)", Error))
    if e.org_only:
        out.setdefault(403, ("org_key_required: acts for the whole organization, refused with X-Mailpipe-User", Error))
    if e.body is not None or e.query or _params(e.path):
        out.setdefault(422, ("validation error (details.errors names each field)", Error))
    if e.body is not None:
        out.setdefault(413, ("request body larger than this route accepts", Error))
        out.setdefault(415, ("multipart bodies are not accepted; send JSON", Error))
    return out


def openapi_document(routers: list[ApiRouter], *, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for every registered endpoint and websocket; schemas come from the pydantic models."""
    collected = _Schemas()
    for router in routers:
        for e in router.endpoints:
            if e.body is not None:
                collected.want(e.body, "validation")
            for _, schema in _statuses(e).values():
                if isinstance(schema, type):
                    collected.want(schema, "serialization")
    refs, schemas = collected.build()
    paths: dict[str, dict[str, Any]] = {}
    for router in routers:
        for e in router.endpoints:
            op: dict[str, Any] = {
                "summary": e.summary,
                "tags": [e.tag],
                "operationId": _operation_id(e.method, e.path),
                "responses": {str(code): _reply(text, schema, refs) for code, (text, schema) in sorted(_statuses(e).items())},
            }
            if not e.public and e.path.startswith("/api/"):
                op["security"] = [{"bearer": []}]
            params = [e.path_params.get(p, ID).openapi("path") | {"name": p} for p in _params(e.path)]
            params += [q.openapi() for q in e.query]
            if not e.public and e.path.startswith("/api/"):
                params.append(ACTING_USER.openapi("header"))
            if params:
                op["parameters"] = params
            if e.body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[(e.body, "validation")]}},
                                     "x-max-bytes": e.max_body}
            oa_path = re.sub(r"{([a-zA-Z_]+):[a-z]+}", r"{\1}", e.path)
            paths.setdefault(oa_path, {})[e.method.lower()] = op
        documented = {d.path for d in router.websocket_docs}
        docs = list(router.websocket_docs) + [
            WebSocketDoc(w.path, (getattr(w.endpoint, "__doc__", None) or "websocket").strip().splitlines()[0], router.tag)
            for w in router.websockets if w.path not in documented]
        for d in docs:
            ws: dict[str, Any] = {
                "summary": d.summary, "tags": [d.tag], "operationId": _operation_id("ws", d.path), "x-websocket": True,
                "description": "A WebSocket endpoint (connect with ws:// or wss://); documented here so every route is listed.",
                "responses": {"101": {"description": "switching protocols; JSON messages follow"}},
            }
            if d.query:
                ws["parameters"] = [q.openapi() for q in d.query]
            paths.setdefault(d.path, {})["get"] = ws
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailpipe", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
