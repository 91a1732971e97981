"""The bytes each SMTP transaction of an outbound email sends: the stored draft, with its
recipient's pixel, tracked links and unsubscribe link (or the canonical message itself when
nothing is tracked), and the tracked links the copy points at.

A copy that differs from the canonical message only in its HTML (tracking without an unsubscribe
link) is the canonical message's bytes with the recipient's HTML part swapped in
(:func:`pipeline.stages.compose.swap_html`): no MIME tree is built again per recipient.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from models import Delivery, Outbox
from ops.keys import get_keyring
from pipeline.clients.storage import StorageError, get_storage
from pipeline.flows.outbound import draft_from_json, load_attachments
from pipeline.stages.compose import compose, html_part_bytes, swap_html
from pipeline.stages.html_text import html_to_text
from pipeline.stages.link_rewrite import inject
from pipeline.stages.tracking_ids import recipient_hash

__all__ = ["DeliveryCopy", "DeliveryCopies"]


@dataclass
class DeliveryCopy:
    """The bytes of one delivery's copy and the tracked links it points at."""

    raw: bytes
    links: list[dict[str, Any]]


class DeliveryCopies:
    """Composes the copies of one email's deliveries, loading its attachments and deriving its text
    part once for all of them."""

    def __init__(self, email_id: str, outbox: Outbox, public_url: str) -> None:
        self.email_id, self.outbox, self.public_url = email_id, outbox, public_url
        self._attachments: list[Any] | None = None
        self._text: str | None = None  # the text part derived from the draft's HTML
        self._base: bytes | None = None  # the canonical message, read once
        self._base_html: bytes | None = None  # its HTML part as written in it

    def copy_for(self, d: Delivery) -> DeliveryCopy:
        """Compose this delivery's copy: the stored draft, with its recipient's pixel and tracked links.

        A copy for nobody in particular (tracking off) is the canonical message itself, byte for byte.
        """
        if d.tracked_for is None:
            return DeliveryCopy(get_storage().get(self.outbox.base_key), [])
        draft = self.outbox.draft
        changes: dict[str, Any] = {}
        links: list[dict[str, Any]] = []
        public = self.public_url
        keyring = get_keyring()
        if d.tracked_for is not None:
            if self.outbox.category == "marketing":
                uhash = recipient_hash(partial(keyring.sign, "unsubscribe"), self.email_id, d.tracked_for)
                changes["unsubscribe_url"] = f"{public.rstrip('/')}/unsubscribe/{self.email_id}/{uhash}"
            if draft.get("html") is not None and (self.outbox.track_opens or self.outbox.track_clicks):
                injected = inject(
                    draft["html"], email_id=self.email_id, recipient=d.tracked_for, public_url=public,
                    open_signer=partial(keyring.sign, "open") if self.outbox.track_opens else None,
                    click_signer=partial(keyring.sign, "click") if self.outbox.track_clicks else None,
                    skip_urls=(changes["unsubscribe_url"],) if "unsubscribe_url" in changes else (),
                )
                changes["html"] = injected.html
                links = [{"email_id": self.email_id, "link_hash": spec.link_hash, "url": spec.url, "position": spec.position,
                          "text": spec.text[:500]} for spec in injected.links]
                if "unsubscribe_url" not in changes and (swapped := self._swapped(draft["html"], injected.html)) is not None:
                    return DeliveryCopy(swapped, links)
                if draft.get("text") is None:  # the text part shows the original links, not tracking URLs
                    if self._text is None:
                        self._text = html_to_text(draft["html"])
                    changes["text"] = self._text
        if self._attachments is None:
            self._attachments = load_attachments(self.outbox.attachments)
        raw, _ = compose(draft_from_json(draft, tuple(self._attachments), **changes))
        return DeliveryCopy(raw, links)

    def _swapped(self, html: str, tracked: str) -> bytes | None:
        """The canonical message with ``tracked`` as its HTML (None: compose the copy instead)."""
        if self._base is None:
            try:
                self._base = get_storage().get(self.outbox.base_key)
            except StorageError:  # the draft row alone still composes the copy
                self._base = b""
        if not self._base:
            return None
        if self._base_html is None:
            self._base_html = html_part_bytes(html)  # the canonical HTML part, encoded once for every copy
        return swap_html(self._base, self._base_html, tracked)
