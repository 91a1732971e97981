"""A local stand-in for the Notion API (version 2025-09-03) that the real ``notion-client`` talks to.

It implements what mailpipe calls — ``users/me``, ``search``, ``databases.retrieve`` (with
``data_sources``), ``data_sources.retrieve``, ``pages.create``, ``blocks.children.append`` and
``.list``, ``file_uploads.create``/``send`` and ``oauth/token`` (Basic auth) — and rejects bodies
the way Notion documents (developers.notion.com/reference/request-limits): rich text over 2,000
characters, links over 2,000, arrays over 100 items, more than 100 children, more than two levels
of nesting or 1,000 block elements per request, properties the data source does not have, email
values over 200 characters, multi-select names with commas, single-part uploads over 20 MB.

Tests seed databases, script failures (:meth:`fail_next`: 429 with Retry-After, 529
service_overload, 401...), and read pages back as block trees.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.harness.asgi_server import AsgiServer

__all__ = ["NotionServer", "validate_children"]

SINGLE_PART_MAX = 20 * 1024 * 1024
TEXT_TYPES = {"paragraph", "heading_1", "heading_2", "heading_3", "bulleted_list_item", "numbered_list_item", "quote",
              "code", "to_do", "toggle", "callout"}
OTHER_TYPES = {"divider", "table", "table_row", "image", "file", "pdf", "bookmark"}


class _Invalid(Exception):
    pass


def _check_rich(rich: Any, where: str) -> None:
    if not isinstance(rich, list):
        raise _Invalid(f"{where} should be an array")
    if len(rich) > 100:
        raise _Invalid(f"{where}.length should be ≤ `100`, instead was `{len(rich)}`.")
    for i, r in enumerate(rich):
        text = (r.get("text") or {})
        content = text.get("content", "")
        if not isinstance(content, str):
            raise _Invalid(f"{where}[{i}].text.content should be a string")
        if len(content) > 2000:
            raise _Invalid(f"{where}[{i}].text.content.length should be ≤ `2000`, instead was `{len(content)}`.")
        link = text.get("link")
        if link is not None:
            url = link.get("url", "")
            if not isinstance(url, str) or len(url) > 2000 or not url:
                raise _Invalid(f"{where}[{i}].text.link.url should be a URL of ≤ 2000 characters")


def validate_children(children: Any, where: str = "body.children") -> int:
    """Check one request's children as Notion does; returns the number of block elements."""
    if not isinstance(children, list):
        raise _Invalid(f"{where} should be an array")
    if len(children) > 100:
        raise _Invalid(f"{where}.length should be ≤ `100`, instead was `{len(children)}`.")
    total = 0

    def walk(blocks: list[Any], level: int, path: str) -> None:
        nonlocal total
        for i, b in enumerate(blocks):
            p = f"{path}[{i}]"
            total += 1
            kind = b.get("type")
            if kind not in TEXT_TYPES | OTHER_TYPES or not isinstance(b.get(kind), dict):
                raise _Invalid(f"{p} is not a supported block ({kind!r})")
            body = b[kind]
            if kind in TEXT_TYPES:
                _check_rich(body.get("rich_text", []), f"{p}.{kind}.rich_text")
            if kind == "table_row":
                for j, cell in enumerate(body.get("cells", [])):
                    _check_rich(cell, f"{p}.table_row.cells[{j}]")
            if kind == "image" and body.get("type") == "external":
                if len(body["external"].get("url", "")) > 2000:
                    raise _Invalid(f"{p}.image.external.url.length should be ≤ `2000`")
            kids = body.get("children")
            if kind == "table":
                if not kids:
                    raise _Invalid(f"{p}.table.children should be defined")
                width = body.get("table_width")
                for j, row in enumerate(kids):
                    if row.get("type") != "table_row" or len(row["table_row"].get("cells", [])) != width:
                        raise _Invalid(f"{p}.table.children[{j}] should be a table_row with {width} cells")
            if kids:
                if level >= 2:
                    raise _Invalid(f"{p}.{kind}.children: only two levels of nesting are allowed in one request")
                if len(kids) > 100:
                    raise _Invalid(f"{p}.{kind}.children.length should be ≤ `100`, instead was `{len(kids)}`.")
                walk(kids, level + 1, f"{p}.{kind}.children")

    walk(children, 0, where)
    if total > 1000:
        raise _Invalid(f"{where}: a request may hold at most 1000 block elements, instead was {total}")
    return total


def _err(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"object": "error", "status": status, "code": code, "message": message,
                         "request_id": str(uuid.uuid4())}, status_code=status, headers=headers)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class NotionServer:
    client_id: str = "notion-client-id"
    client_secret: str = "notion-client-secret"
    tokens: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.databases: dict[str, dict[str, Any]] = {}
        self.pages: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, dict[str, Any]] = {}  # id → {"block": ..., "children": [ids], "parent": id}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.codes: dict[str, str] = {}
        self.refresh_tokens: dict[str, str] = {}
        self._script: list[tuple[str, int, str, dict[str, str]]] = []
        self.after_create: Any = None  # test hook, called with the page id once a page is stored
        routes = [
            Route("/v1/users/me", self._me), Route("/v1/search", self._search, methods=["POST"]),
            Route("/v1/databases/{id}", self._database), Route("/v1/data_sources/{id}", self._data_source),
            Route("/v1/data_sources/{id}/query", self._query, methods=["POST"]),
            Route("/v1/pages", self._create_page, methods=["POST"]), Route("/v1/pages/{id}", self._page),
            Route("/v1/blocks/{id}/children", self._children, methods=["GET", "PATCH"]),
            Route("/v1/file_uploads", self._create_upload, methods=["POST"]),
            Route("/v1/file_uploads/{id}/send", self._send_upload, methods=["POST"]),
            Route("/v1/oauth/token", self._oauth_token, methods=["POST"]),
        ]
        self._http = AsgiServer(Starlette(routes=routes), "the Notion stand-in")

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return self._http.base

    def start(self) -> NotionServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    # -- test controls ----------------------------------------------------------------------------------

    def add_database(self, title: str, properties: dict[str, str], icon: str | None = "📬") -> str:
        """A database with one data source whose properties are {name: type}; returns the database id."""
        db_id, ds_id = str(uuid.uuid4()), str(uuid.uuid4())
        props = {name: {"id": uuid.uuid4().hex[:4], "name": name, "type": kind, kind: {}} for name, kind in properties.items()}
        self.databases[db_id] = {"id": db_id, "title": title, "icon": icon, "data_source_id": ds_id, "properties": props}
        return db_id

    def fail_next(self, path_part: str, status: int, code: str, *, times: int = 1, headers: dict[str, str] | None = None) -> None:
        for _ in range(times):
            self._script.append((path_part, status, code, headers or {}))

    def page_blocks(self, page_id: str) -> list[dict[str, Any]]:
        """The page's content read back as a tree (type, text, annotations, children)."""
        def tree(block_id: str) -> list[dict[str, Any]]:
            return [{**self.blocks[c]["block"], "children": tree(c)} for c in self.blocks[block_id]["children"]]

        return tree(page_id)

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.calls if m == method and path_part in p)

    # -- plumbing -----------------------------------------------------------------------------------------

    def _gate(self, request: Request, *, auth: bool = True) -> Response | None:
        with self._lock:
            self.calls.append((request.method, request.url.path))
            for i, (part, status, code, headers) in enumerate(self._script):
                if part in request.url.path:
                    del self._script[i]
                    return _err(status, code, f"scripted {code}", headers)
        if request.headers.get("notion-version") != "2025-09-03":
            return _err(400, "missing_version", "Notion-Version header 2025-09-03 expected")
        if auth:
            token = request.headers.get("authorization", "").removeprefix("Bearer ")
            if token not in self.tokens:
                return _err(401, "unauthorized", "API token is invalid.")
        return None

    def _ds(self, ds_id: str) -> dict[str, Any] | None:
        return next((d for d in self.databases.values() if d["data_source_id"] == ds_id), None)

    def _store(self, parent: str, children: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for b in children:
            block_id = str(uuid.uuid4())
            kind = b["type"]
            body = {k: v for k, v in b[kind].items() if k != "children"}
            if kind == "file" and body.get("type") == "file_upload":
                up = self.uploads.get(body["file_upload"]["id"])
                if up is None or up["status"] != "uploaded":
                    raise _Invalid(f"file_upload {body['file_upload']['id']} is not uploaded")
                up["attached"] = True
            stored = {"object": "block", "id": block_id, "type": kind, kind: body, "has_children": bool(b[kind].get("children"))}
            self.blocks[block_id] = {"block": stored, "children": [], "parent": parent}
            self.blocks[parent]["children"].append(block_id)
            self._store(block_id, b[kind].get("children") or [])
            out.append(stored)
        return out

    # -- endpoints ------------------------------------------------------------------------------------------

    async def _me(self, request: Request) -> Response:
        return self._gate(request) or JSONResponse({"object": "user", "id": "bot-1", "type": "bot", "bot": {}})

    async def _search(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        body = await request.json()
        kind = (body.get("filter") or {}).get("value")
        query = (body.get("query") or "").lower()
        results: list[dict[str, Any]] = []
        if kind in (None, "data_source"):
            for d in self.databases.values():
                if query in d["title"].lower():
                    results.append({"object": "data_source", "id": d["data_source_id"],
                                    "title": [{"type": "text", "text": {"content": d["title"]}, "plain_text": d["title"]}],
                                    "icon": {"type": "emoji", "emoji": d["icon"]} if d["icon"] else None,
                                    "parent": {"type": "database_id", "database_id": d["id"]}})
        if kind in (None, "page"):
            for p in self.pages.values():
                if query in p["title"].lower():
                    results.append({k: v for k, v in p.items() if k != "title"})
        return JSONResponse({"object": "list", "results": results, "has_more": False, "next_cursor": None})

    async def _database(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        d = self.databases.get(request.path_params["id"])
        if d is None:
            return _err(404, "object_not_found", "Could not find database. Make sure it is shared with the integration.")
        return JSONResponse({"object": "database", "id": d["id"], "title": [{"type": "text", "text": {"content": d["title"]},
                                                                              "plain_text": d["title"]}],
                             "icon": {"type": "emoji", "emoji": d["icon"]} if d["icon"] else None,
                             "data_sources": [{"id": d["data_source_id"], "name": d["title"]}]})

    async def _data_source(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        d = self._ds(request.path_params["id"])
        if d is None:
            return _err(404, "object_not_found", "Could not find data source.")
        return JSONResponse({"object": "data_source", "id": d["data_source_id"], "properties": d["properties"],
                             "parent": {"type": "database_id", "database_id": d["id"]}})

    async def _query(self, request: Request) -> Response:
        """Pages of a data source, oldest first; supports the created_time on_or_after timestamp filter."""
        if (denied := self._gate(request)) is not None:
            return denied
        ds_id = request.path_params["id"]
        if self._ds(ds_id) is None:
            return _err(404, "object_not_found", "Could not find data source.")
        body = await request.json()
        flt = body.get("filter") or {}
        since = None
        if flt:
            if flt.get("timestamp") != "created_time" or "on_or_after" not in (flt.get("created_time") or {}):
                return _err(400, "validation_error", "this stand-in filters on created_time on_or_after only")
            since = datetime.fromisoformat(flt["created_time"]["on_or_after"].replace("Z", "+00:00"))
        pages = [p for p in self.pages.values() if p["parent"].get("data_source_id") == ds_id and
                 (since is None or datetime.fromisoformat(p["created_time"].replace("Z", "+00:00")) >= since)]
        start = int(body.get("start_cursor") or 0)
        size = min(int(body.get("page_size") or 100), 100)
        chunk = pages[start : start + size]
        more = start + size < len(pages)
        return JSONResponse({"object": "list", "results": [{k: v for k, v in p.items() if k != "title"} for p in chunk],
                             "has_more": more, "next_cursor": str(start + size) if more else None})

    async def _create_page(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        body = await request.json()
        parent = body.get("parent") or {}
        if parent.get("type") != "data_source_id":
            return _err(400, "validation_error", "body.parent.data_source_id should be defined")
        d = self._ds(parent.get("data_source_id", ""))
        if d is None:
            return _err(404, "object_not_found", "Could not find data source.")
        try:
            title = self._check_properties(d, body.get("properties") or {})
            validate_children(body.get("children") or [])
        except _Invalid as exc:
            return _err(400, "validation_error", str(exc))
        page_id = str(uuid.uuid4())
        page = {"object": "page", "id": page_id, "created_time": _now(), "parent": parent, "properties": body.get("properties"),
                "url": f"https://www.notion.so/{page_id.replace('-', '')}", "icon": body.get("icon"), "title": title}
        with self._lock:
            self.pages[page_id] = page
            self.blocks[page_id] = {"block": None, "children": [], "parent": None}
            try:
                self._store(page_id, body.get("children") or [])
            except _Invalid as exc:
                return _err(400, "validation_error", str(exc))
        if self.after_create is not None:
            self.after_create(page_id)
        return JSONResponse({k: v for k, v in page.items() if k != "title"})

    async def _page(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        p = self.pages.get(request.path_params["id"])
        return JSONResponse({k: v for k, v in p.items() if k != "title"}) if p else _err(404, "object_not_found", "no page")

    def _check_properties(self, d: dict[str, Any], props: dict[str, Any]) -> str:
        title = ""
        for name, value in props.items():
            schema = d["properties"].get(name)
            if schema is None:
                raise _Invalid(f"{name} is not a property that exists.")
            kind = schema["type"]
            if kind not in value:
                raise _Invalid(f"{name} is expected to be {kind}.")
            if kind in ("title", "rich_text"):
                _check_rich(value[kind], f"body.properties.{name}.{kind}")
                if kind == "title":
                    title = "".join(r["text"]["content"] for r in value[kind])
            elif kind == "email" and value[kind] is not None and len(value[kind]) > 200:
                raise _Invalid(f"body.properties.{name}.email.length should be ≤ `200`")
            elif kind == "multi_select":
                if len(value[kind]) > 100 or any("," in o.get("name", "") for o in value[kind]):
                    raise _Invalid(f"body.properties.{name}.multi_select: ≤ 100 options, no commas in names")
            elif kind == "date":
                datetime.fromisoformat(value[kind]["start"].replace("Z", "+00:00"))
        return title

    async def _children(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        block_id = request.path_params["id"]
        if block_id not in self.blocks:
            return _err(404, "object_not_found", "Could not find block.")
        if request.method == "GET":
            ids = self.blocks[block_id]["children"]
            start = int(request.query_params.get("start_cursor") or 0)
            size = min(int(request.query_params.get("page_size") or 100), 100)
            chunk = ids[start : start + size]
            more = start + size < len(ids)
            return JSONResponse({"object": "list", "results": [self.blocks[c]["block"] for c in chunk], "has_more": more,
                                 "next_cursor": str(start + size) if more else None})
        body = await request.json()
        try:
            validate_children(body.get("children"))
            with self._lock:
                results = self._store(block_id, body["children"])
        except _Invalid as exc:
            return _err(400, "validation_error", str(exc))
        return JSONResponse({"object": "list", "results": results, "has_more": False, "next_cursor": None})

    async def _create_upload(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        body = await request.json()
        if body.get("mode", "single_part") != "single_part":
            return _err(400, "validation_error", "only single_part uploads on this workspace")
        upload_id = str(uuid.uuid4())
        self.uploads[upload_id] = {"id": upload_id, "filename": body.get("filename"), "content_type": body.get("content_type"),
                                   "status": "pending", "content": None, "attached": False, "created": time.time()}
        return JSONResponse({"object": "file_upload", "id": upload_id, "status": "pending", "filename": body.get("filename"),
                             "upload_url": f"{self.base}/v1/file_uploads/{upload_id}/send"})

    async def _send_upload(self, request: Request) -> Response:
        if (denied := self._gate(request)) is not None:
            return denied
        up = self.uploads.get(request.path_params["id"])
        if up is None:
            return _err(404, "object_not_found", "Could not find file upload.")
        form = await request.form()
        f = form.get("file")
        if f is None or isinstance(f, str):
            return _err(400, "validation_error", "file is required (multipart/form-data)")
        data = await f.read()
        if len(data) > SINGLE_PART_MAX:
            return _err(400, "validation_error", "single_part uploads are limited to 20 MB")
        up.update(status="uploaded", content=data, content_length=len(data))
        return JSONResponse({"object": "file_upload", "id": up["id"], "status": "uploaded", "filename": up["filename"]})

    async def _oauth_token(self, request: Request) -> Response:
        if (denied := self._gate(request, auth=False)) is not None:
            return denied
        basic = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if basic != expected:
            return _err(401, "invalid_client", "Client authentication failed.")
        body = await request.json()
        if body.get("grant_type") == "authorization_code":
            user = self.codes.pop(str(body.get("code")), None)
            if user is None:
                return _err(400, "invalid_grant", "Invalid code.")
        elif body.get("grant_type") == "refresh_token":
            user = self.refresh_tokens.pop(str(body.get("refresh_token")), None)
            if user is None:
                return _err(400, "invalid_grant", "Invalid refresh token.")
        else:
            return _err(400, "unsupported_grant_type", "grant_type")
        access, refresh = "ntn_" + uuid.uuid4().hex, "nrt_" + uuid.uuid4().hex
        self.tokens.add(access)
        self.refresh_tokens[refresh] = user
        return JSONResponse({"access_token": access, "token_type": "bearer", "refresh_token": refresh, "bot_id": "bot-1",
                             "workspace_id": "ws-1", "workspace_name": "Acme", "workspace_icon": None,
                             "owner": {"type": "user", "user": {"id": user}}, "duplicated_template_id": None})
