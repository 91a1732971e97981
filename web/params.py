"""Typed query and path parameters: one declaration both documents a parameter and reads it.

A route declares its parameters (``ApiRouter.route(query=(LIMIT, Param.boolean("linked")))``);
the OpenAPI document takes each one's :meth:`Param.openapi` and the handler reads the value
with :meth:`Param.read`, which answers a 422 naming the parameter for anything out of type,
range or enum. Path parameters default to :data:`ID` (the shape of CRM and mailpipe ids).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request

from web.errors import field_error

__all__ = ["ID", "Param"]

Kind = Literal["string", "integer", "boolean"]
_INT = re.compile(r"-?[0-9]{1,18}")
_TRUE, _FALSE = ("true", "1"), ("false", "0")


@dataclass(frozen=True, slots=True)
class Param:
    """A query (or path) parameter: its JSON-schema type, bounds and how to read it."""

    name: str
    kind: Kind = "string"
    description: str = ""
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] | None = None
    max_length: int = 200
    pattern: str | None = None
    format: str | None = None

    # ---- constructors for the common shapes ----------------------------------------------------

    @classmethod
    def integer(cls, name: str, default: int | None, *, minimum: int = 1, maximum: int = 500, description: str = "") -> Param:
        return cls(name, "integer", description, default=default, minimum=minimum, maximum=maximum)

    @classmethod
    def boolean(cls, name: str, default: bool | None = None, *, description: str = "") -> Param:
        return cls(name, "boolean", description, default=default)

    @classmethod
    def choice(cls, name: str, values: tuple[str, ...], default: str | None = None, *, description: str = "") -> Param:
        return cls(name, "string", description, default=default, enum=values)

    @classmethod
    def text(cls, name: str, *, max_length: int = 200, required: bool = False, description: str = "",
             pattern: str | None = None, format: str | None = None) -> Param:
        return cls(name, "string", description, required=required, max_length=max_length, pattern=pattern, format=format)

    # ---- documentation -------------------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "integer":
            out.update(minimum=self.minimum, maximum=self.maximum)
        elif self.kind == "string":
            if self.enum is not None:
                out["enum"] = list(self.enum)
            else:
                out.update(minLength=1, maxLength=self.max_length)
                if self.pattern is not None:
                    out["pattern"] = self.pattern
                if self.format is not None:
                    out["format"] = self.format
        if self.default is not None:
            out["default"] = self.default
        return out

    def openapi(self, where: str = "query") -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "in": where, "required": self.required or where == "path",
                               "schema": self.schema()}
        if self.description:
            out["description"] = self.description
        return out

    # ---- reading -------------------------------------------------------------------------------

    def read(self, request: Request) -> Any:
        """The typed value, the default when absent or empty, or a 422 naming the parameter."""
        raw = request.query_params.get(self.name)
        if raw is None or raw == "":
            if self.required:
                raise field_error(self.name, "required", kind="missing", text=f"query parameter {self.name!r} is required")
            return self.default
        return self.parse(raw)

    def parse(self, raw: str) -> Any:
        if self.kind == "integer":
            if not _INT.fullmatch(raw):
                raise field_error(self.name, "must be an integer", kind="int_parsing")
            value = int(raw)
            if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
                raise field_error(self.name, f"must be between {self.minimum} and {self.maximum}", kind="out_of_range")
            return value
        if self.kind == "boolean":
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise field_error(self.name, "must be true or false", kind="bool_parsing")
        if self.enum is not None:
            if raw not in self.enum:
                raise field_error(self.name, f"must be one of {', '.join(self.enum)}", kind="enum")
            return raw
        if len(raw) > self.max_length:
            raise field_error(self.name, f"longer than {self.max_length} characters", kind="string_too_long")
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
            raise field_error(self.name, "has an invalid format", kind="string_pattern_mismatch")
        return raw


# The documented shape of ids in paths (24-hex ObjectIds, UUIDs, mailpipe's own ids): no slash,
# whitespace or control characters, not a dot segment. Routes check further where it matters.
ID = Param.text("id", max_length=64, pattern=r"^[^/\s.][^/\s]{0,63}$")
