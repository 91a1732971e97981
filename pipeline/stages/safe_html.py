"""HTML of received mail made safe to show inside the CRM (pure: a string in, a string out).

An allowlist sanitizer (nh3, the Python binding of the Rust ``ammonia`` crate) does the work; this
module only chooses what it allows and how image and link URLs are rewritten:

- no scripts, event handlers, frames, objects, embeds, forms, ``<meta>`` (refresh), ``<link>``
  (external stylesheets), ``<style>`` blocks or ``<base>``: none of them is on the tag list, and
  the ones whose content is code are dropped with their content;
- links keep only ``http``, ``https``, ``mailto`` and ``tel`` URLs (no ``javascript:``, ``data:``,
  ``vbscript:``...) and get ``rel="noopener noreferrer"`` and ``target="_blank"``; images may be
  ``data:`` PNG, GIF, JPEG or WebP (nothing else, SVG included);
- ``style`` attributes are reduced to a list of harmless properties, and dropped whole when they
  hold ``url(``, ``expression(``, ``@import``, ``behavior`` or a CSS escape that could spell them;
- ``cid:`` images point at the attachment's download URL (``cid_urls``); an unknown cid loses its
  ``src``;
- remote (``http``/``https``) images are replaced by :data:`BLOCKED_IMAGE` unless
  ``remote_content`` is true, so opening mail in the CRM fires no one's tracking pixel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import lxml.html
import nh3

from pipeline.stages.budgets import TRUNCATED_NOTICE, clip
from pipeline.stages.html_text import parse_html

__all__ = ["BLOCKED_IMAGE", "SAFE_HTML_CHARS", "safe_html"]

#: Characters of a body that are sanitized for display (the API takes bodies up to 5 MB; Gmail clips at 102 KB).
SAFE_HTML_CHARS = 5_000_000

# A 1×1 transparent GIF: what a blocked remote image shows (the CRM may style img[alt] around it).
BLOCKED_IMAGE = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"

_TAGS = {
    "a", "abbr", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center", "cite", "code", "col",
    "colgroup", "dd", "del", "dfn", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
    "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var", "wbr",
}
# Removed together with everything inside them (the rest of the disallowed tags keep their text).
_DROP_WITH_CONTENT = {"script", "style", "template", "iframe", "frame", "frameset", "object", "embed", "applet", "noscript",
                      "noembed", "noframes", "title", "head", "svg", "math", "select", "textarea", "xmp", "plaintext"}
_GENERIC = {"align", "valign", "width", "height", "style", "dir", "lang", "title", "bgcolor", "color", "border", "class"}
_ATTRIBUTES = {
    "*": _GENERIC,
    "a": {"href", "hreflang"},
    "img": {"src", "alt"},
    "font": {"face", "size"},
    "table": {"cellpadding", "cellspacing", "summary"},
    "td": {"colspan", "rowspan", "nowrap", "headers", "scope"},
    "th": {"colspan", "rowspan", "nowrap", "headers", "scope", "abbr"},
    "col": {"span"}, "colgroup": {"span"}, "ol": {"start", "type", "reversed"}, "ul": {"type"}, "li": {"value"},
    "blockquote": {"cite"}, "q": {"cite"}, "del": {"cite", "datetime"}, "ins": {"cite", "datetime"},
}
_SCHEMES = {"http", "https", "mailto", "tel", "cid", "data"}  # cid and data only survive on images (see _filter)
_INLINE_IMAGE = re.compile(r"data:image/(png|gif|jpe?g|webp);base64,[a-z0-9+/=\s]*", re.I)
_STYLE_PROPERTIES = {
    "background-color", "border", "border-bottom", "border-collapse", "border-color", "border-left", "border-radius",
    "border-right", "border-spacing", "border-style", "border-top", "border-width", "color", "direction", "display",
    "font", "font-family", "font-size", "font-style", "font-variant", "font-weight", "height", "letter-spacing",
    "line-height", "list-style-type", "margin", "margin-bottom", "margin-left", "margin-right", "margin-top",
    "max-height", "max-width", "min-height", "min-width", "padding", "padding-bottom", "padding-left", "padding-right",
    "padding-top", "table-layout", "text-align", "text-decoration", "text-indent", "text-transform", "vertical-align",
    "white-space", "width", "word-break", "word-spacing", "word-wrap",
}
_CSS_COMMENT = re.compile(r"/\*.*?(\*/|$)", re.S)
_CSS_DANGER = ("url(", "expression(", "@import", "behavior", "-moz-binding", "javascript:", "vbscript:", "image-set(", "\\")


def _style_ok(value: str) -> bool:
    flat = "".join(_CSS_COMMENT.sub("", value).lower().split())
    return not any(token in flat for token in _CSS_DANGER)


def _bounded(html: str) -> str:
    """``html`` re-serialized by lxml: at most :data:`SAFE_HTML_CHARS` characters, 100 attributes per tag
    and 256 levels of nesting (libxml2's limit). The sanitizer's HTML5 tree builder is quadratic in
    the nesting depth and recurses by it (50,000 nested ``<div>``s: 12 s; 450,000: a crashed
    process), so a hostile body never reaches it unbounded. The sanitizer has the last word on what
    is kept: this pass only normalizes."""
    clipped, cut = clip(html, SAFE_HTML_CHARS)
    root = parse_html(clipped)
    if root is None:
        return ""
    out = lxml.html.tostring(root, encoding="unicode")
    return out + f"<p>{TRUNCATED_NOTICE}</p>" if cut else out


def safe_html(html: str, *, cid_urls: Mapping[str, str], remote_content: bool) -> str:
    """``html`` sanitized for display; ``cid_urls`` maps a Content-ID (without ``<>``) to its attachment URL."""
    html = _bounded(html)

    def _filter(tag: str, attr: str, value: str) -> str | None:
        if attr == "style":
            return value if _style_ok(value) else None
        if tag == "img" and attr == "src":
            low = value.strip().lower()
            if low.startswith("cid:"):
                return cid_urls.get(value.strip()[4:].strip("<>"))
            if low.startswith(("http:", "https:", "//")):
                return value if remote_content else BLOCKED_IMAGE
            if _INLINE_IMAGE.fullmatch(value.strip()):
                return value.strip()  # a raster image inside the message: loads nothing from anywhere
            return None  # relative or other schemes: nothing to load
        if low_scheme(value) in ("cid", "data"):
            return None  # no cid: or data: link (a data: URL is a page of the sender's making)
        return value

    return nh3.clean(
        html, tags=_TAGS, clean_content_tags=_DROP_WITH_CONTENT, attributes=_ATTRIBUTES, attribute_filter=_filter,
        strip_comments=True, link_rel="noopener noreferrer", set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=_SCHEMES, filter_style_properties=_STYLE_PROPERTIES, url_relative="deny",
    )


def low_scheme(value: str) -> str:
    """The URL scheme of ``value`` in lower case ("" when it has none)."""
    head, sep, _ = value.strip().partition(":")
    return head.lower() if sep and head.isascii() and head.replace("+", "").replace("-", "").replace(".", "").isalnum() else ""
