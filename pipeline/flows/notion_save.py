"""Saving an email to Notion (the ``notion.save`` job): one email → one Notion page, exactly once,
however often the message runs.

The ``notion_saves`` row is the intent and the progress. Before ``pages.create`` the row goes to
``creating`` with a fresh ``ref`` that is also written into the page's first block; a run that
finds ``creating`` (its predecessor died around the create call) searches the data source for a
page carrying that ref before it creates anything. Once the page exists its id is stored, the rest
of the content is appended in batches, and a resumed run counts the page's top-level blocks
instead of trusting its cursor, so nothing is appended twice. 429/529 are waited out as Notion
says; other 4xx fail the save with a readable reason and a notification; 5xx and network errors
go back to Dramatiq's retries.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from models import Contact, Document, Email, EmailLink, Lead, NotionConnection, NotionSave, utcnow
from models.db import get_engine
from models.lease import Lease, LeaseLost, run_owner
from ops import metrics
from ops.settings import get_settings
from pipeline import jobs
from pipeline.clients.notion import NotionError, call, make_client, results
from pipeline.clients.storage import StorageError, get_storage
from pipeline.flows import notifications
from pipeline.flows.events_outbox import email_payloads, record_event
from pipeline.flows.notion_connect import refresh, schema, token_of
from pipeline.scheduler import register_sweep
from pipeline.stages import notion_blocks as nb
from pipeline.stages.notion_page import find_ref, header_block, page_properties

__all__ = ["NOTION_LEASE", "NotionSaveRun", "customer_of", "run_save", "sweep_notion_saves"]

log = structlog.get_logger("mailpipe.notion")

SINGLE_PART_MAX = 20 * 1024 * 1024
# One run works on a save at a time; a dead run's lease runs out.
NOTION_LEASE = Lease(NotionSave, "id", "lease_owner", "lease_until", timedelta(minutes=10))
STALE = timedelta(minutes=10)  # a save not finished by then is handed to the broker again
GIVE_UP = timedelta(days=1)  # a save still failing after this is failed for good, with a notification
RECOVERY_SKEW = timedelta(minutes=2)


class _Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def customer_of(s: Session, email: Email) -> str | None:
    """The other party's name: the linked contact or lead, else the display name or address."""
    links = list(s.execute(select(EmailLink.entity_type, EmailLink.entity_id).where(EmailLink.email_id == email.id)).all())
    for kind, model in (("contact", Contact), ("lead", Lead)):
        for t, entity_id in links:
            if t == kind:
                row = s.get(model, (email.org_id, entity_id))
                if row is not None:
                    first = getattr(row, "first_name", None) or getattr(row, "firstName", None)
                    last = getattr(row, "last_name", None) or getattr(row, "lastName", None)
                    name = " ".join(x for x in (first, last) if x)
                    if name:
                        return name
    if email.direction == "outbound":
        return email.to_emails[0] if email.to_emails else None
    return email.from_name or email.from_email


class NotionSaveRun:
    """One run over a save: the rows it works on, its lease, and the steps that make the page."""

    def __init__(self, save_id: str, owner: str | None = None) -> None:
        self.save_id = save_id
        self.owner = owner or run_owner(secrets.token_hex(6))
        with Session(get_engine(), expire_on_commit=False) as s:
            self.row = s.get(NotionSave, save_id)
            if self.row is None:
                return
            self.email = s.get(Email, self.row.email_id)
            self.conn = s.execute(select(NotionConnection).where(NotionConnection.org_id == self.row.org_id,
                                                                 NotionConnection.user == self.row.user_id)).scalar_one_or_none()
            self.customer = customer_of(s, self.email) if self.email is not None else None
            self.docs = list(s.execute(select(Document).where(Document.email_id == self.row.email_id)
                                       .order_by(col(Document.part_index))).scalars())

    def claim(self) -> bool:
        """Take the save's lease (a redelivery of the same message may take it over at once)."""
        with Session(get_engine()) as s:
            taken = NOTION_LEASE.claim(s, self.save_id, self.owner,
                                       where=(col(NotionSave.state).not_in(("done", "failed")),))
            s.commit()
            return taken

    def _set(self, **values: Any) -> None:
        """A guarded write: only while this run holds the lease (which it renews)."""
        values["updated_at"] = utcnow()
        with Session(get_engine()) as s:
            NOTION_LEASE.renew(s, self.save_id, self.owner, **values)
            s.commit()
        for k, v in values.items():
            setattr(self.row, k, v)

    def release(self) -> None:
        with Session(get_engine()) as s:
            NOTION_LEASE.release(s, self.save_id, self.owner)
            s.commit()

    # -- content ---------------------------------------------------------------------------------------

    def _plan(self) -> list[dict[str, Any]]:
        """Header, body, then one file block (or note) per attachment: the same list on every run."""
        assert self.row is not None and self.email is not None
        settings = get_settings()
        crm = f"{settings.public_url.rstrip('/')}/api/v1/emails/{self.email.id}"
        sender = self.email.from_email
        when = self.email.received_at or self.email.sent_at
        body = nb.html_to_blocks(self.email.body_html) if self.email.body_html else nb.text_to_blocks(self.email.body_text)
        blocks = [header_block(self.row.ref or "", sender, when, crm if crm.startswith("https://") else None), *body]
        for doc in self.docs:
            if doc.inline and doc.document_file_mimeType.startswith("image/"):
                continue  # inline images of the body (logos, signatures)
            if doc.size > SINGLE_PART_MAX:
                blocks.extend(nb.attachment_note(doc.document_name, doc.size, "too large to upload to Notion (over 20 MB)"))
            else:
                blocks.append({"object": "block", "type": "file", "file": {"type": "file_upload", "file_upload": {"id": f"doc:{doc.id}"},
                                                                        "name": doc.document_name[:900]}})
        return blocks

    def _resolve_uploads(self, client: Any, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upload the attachments a batch refers to (just before it is sent: uploads expire)."""
        out = []
        for b in blocks:
            ref = (b.get("file") or {}).get("file_upload", {}).get("id", "") if b.get("type") == "file" else ""
            if not ref.startswith("doc:"):
                out.append(b)
                continue
            doc = next(d for d in self.docs if d.id == ref[4:])
            try:
                data = get_storage().get(doc.storage_key)
            except StorageError as exc:
                out.extend(nb.attachment_note(doc.document_name, doc.size, f"not available ({exc})"))
                continue
            created = call(client.file_uploads.create, mode="single_part", filename=doc.document_name[:900],
                           content_type=doc.document_file_mimeType)
            call(client.file_uploads.send, file_upload_id=created["id"],
                 file=(doc.document_name, data, doc.document_file_mimeType))
            out.append(nb.file_block(created["id"], doc.document_name))
        return out

    # -- the run -----------------------------------------------------------------------------------------

    def run(self) -> None:
        if self.row is None or self.row.state in ("done", "failed"):
            return
        if self.email is None or self.email.deleted_at is not None:
            raise _Failed("email_deleted", "the email was deleted")
        if self.conn is None or not token_of(self.conn):
            raise _Failed("not_connected", "connect Notion first (PUT /api/v1/users/{id}/notion or the Notion sign-in)")
        try:
            self._write(str(token_of(self.conn)))
        except NotionError as exc:
            if exc.status == 401 and self.conn.refresh_token:
                fresh = refresh(self.conn)
                if fresh:
                    self._write(fresh)
                    return
            raise

    def _write(self, token: str) -> None:
        assert self.row is not None
        client = make_client(token)
        found = schema(token, self.row.database_id)
        if self.row.data_source_id != found.data_source_id:
            self._set(data_source_id=found.data_source_id)
        blocks = self._plan_with_ref()
        groups = nb.batches(blocks)
        if self.row.page_id is None and self.row.state == "creating":
            self._recover(client, found.data_source_id)
        if self.row.page_id is None:
            assert self.email is not None
            first: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            for sent, later in groups[0] if groups else []:
                if later:
                    break
                first.append((sent, later))
            self._set(state="creating", intent_at=utcnow(), attempts=self.row.attempts + 1)
            props = page_properties(found.columns, title=self.row.title, sender=self.email.from_email,
                                    date=self.email.received_at or self.email.sent_at, tags=list(self.row.tags or []))
            page = call(client.pages.create, parent={"type": "data_source_id", "data_source_id": found.data_source_id},
                        properties=props, icon={"type": "emoji", "emoji": "✉️"},
                        children=self._resolve_uploads(client, [b for b, _ in first]))
            self._set(state="appending", page_id=page["id"], page_url=page.get("url"), blocks_done=len(first))
            metrics.NOTION_SAVES.labels("page_created").inc()
            log.info("notion_page_created", save_id=self.save_id, email_id=self.row.email_id)
        else:
            self._set(blocks_done=self._count_top_level(client, self.row.page_id), state="appending")
        self._append_rest(client, blocks)
        self._finish()

    def _plan_with_ref(self) -> list[dict[str, Any]]:
        assert self.row is not None
        if not self.row.ref:
            self._set(ref=secrets.token_hex(8))
        return self._plan()

    def _recover(self, client: Any, data_source_id: str) -> None:
        """A run died around pages.create: find the page it made. The data source is queried for
        pages created since the intent (Notion's query, unlike its search, is not eventually
        consistent), all result pages read, and the candidate whose first block carries our ref wins."""
        assert self.row is not None
        since = (self.row.intent_at or self.row.created_at) - RECOVERY_SKEW
        created_since = {"timestamp": "created_time", "created_time": {"on_or_after": since.isoformat()}}
        for page in results(client.data_sources.query, data_source_id=data_source_id, filter=created_since):
            first = call(client.blocks.children.list, block_id=page["id"], page_size=1).get("results", [])
            if first and find_ref(first[0]) == self.row.ref:
                log.info("notion_page_recovered", save_id=self.save_id, email_id=self.row.email_id)
                self._set(page_id=page["id"], page_url=page.get("url"), state="appending")
                return

    def _count_top_level(self, client: Any, page_id: str) -> int:
        return sum(1 for _ in results(client.blocks.children.list, block_id=page_id))

    def _append_rest(self, client: Any, blocks: list[dict[str, Any]]) -> None:
        """Append the top-level blocks after ``blocks_done``, and the children deferred for depth."""
        assert self.row is not None and self.row.page_id is not None
        rest = blocks[self.row.blocks_done:]
        for group in nb.batches(rest):
            sent = self._resolve_uploads(client, [b for b, _ in group])
            result = call(client.blocks.children.append, block_id=self.row.page_id, children=sent)
            for created, (_, later) in zip(result.get("results", []), group, strict=False):
                if later:
                    self._append_tree(client, created["id"], later)
            self._set(blocks_done=self.row.blocks_done + len(group))

    def _append_tree(self, client: Any, parent_id: str, children: list[dict[str, Any]]) -> None:
        for group in nb.batches(children):
            result = call(client.blocks.children.append, block_id=parent_id, children=[b for b, _ in group])
            for created, (_, later) in zip(result.get("results", []), group, strict=False):
                if later:
                    self._append_tree(client, created["id"], later)

    def _finish(self) -> None:
        assert self.row is not None
        now = utcnow()
        with Session(get_engine()) as s:
            NOTION_LEASE.renew(s, self.save_id, self.owner, state="done", done_at=now, updated_at=now, error=None, error_code=None,
                               **NOTION_LEASE.handing_back())
            s.execute(update(Email).where(col(Email.id) == self.row.email_id).values(notion_page_url=self.row.page_url))
            pushed = notifications.insert_new(s, [{
                "org_id": self.row.org_id, "user_id": self.row.user_id, "kind": "notion.saved",
                "title": f"Saved to Notion: {self.row.title}"[:500], "body": self.row.page_url or "", "email_id": self.row.email_id,
                "dedupe_key": f"notion.saved:{self.save_id}", "data": {"notion_page_url": self.row.page_url}}])
            record_event(s, self.row.org_id, "notion.saved", {
                **email_payloads(s, [self.row.email_id]).get(self.row.email_id, {"email_id": self.row.email_id}),
                "user_id": self.row.user_id, "save_id": self.save_id, "notion_page_url": self.row.page_url},
                dedupe_key=f"notion.saved:{self.save_id}")
            s.commit()
        notifications.publish(pushed)
        metrics.NOTION_SAVES.labels("done").inc()
        log.info("notion_saved", save_id=self.save_id, email_id=self.row.email_id)

    def fail(self, code: str, message: str) -> None:
        assert self.row is not None
        now = utcnow()
        with Session(get_engine()) as s:
            res = s.exec(update(NotionSave).where(col(NotionSave.id) == self.save_id, col(NotionSave.state) != "done",
                                                     or_(col(NotionSave.lease_owner) == self.owner, col(NotionSave.lease_owner).is_(None)))
                            .values(state="failed", error=message[:1000], error_code=code[:64], updated_at=now,
                                    lease_owner=None, lease_until=None))
            if res.rowcount != 1:
                s.rollback()
                return
            pushed = notifications.insert_new(s, [{
                "org_id": self.row.org_id, "user_id": self.row.user_id, "kind": "notion.failed",
                "title": f"Could not save to Notion: {self.row.title}"[:500], "body": message[:2000], "email_id": self.row.email_id,
                "dedupe_key": f"notion.failed:{self.save_id}", "data": {"error_code": code}}])
            record_event(s, self.row.org_id, "notion.failed", {
                **email_payloads(s, [self.row.email_id]).get(self.row.email_id, {"email_id": self.row.email_id}),
                "user_id": self.row.user_id, "save_id": self.save_id, "error_code": code, "message": message[:500]},
                dedupe_key=f"notion.failed:{self.save_id}")
            s.commit()
        notifications.publish(pushed)
        metrics.NOTION_SAVES.labels("failed").inc()
        log.warning("notion_save_failed", save_id=self.save_id, code=code)


def run_save(save_id: str, owner: str) -> None:
    """One run over a save (``owner``: :func:`models.lease.run_owner` of the message). Done, failed, or
    held by another run: nothing to do. Raises what Dramatiq's backoff can help with (5xx, network)."""
    job = NotionSaveRun(save_id, owner)
    if job.row is None or job.row.state in ("done", "failed"):
        return
    if not job.claim():
        log.info("notion_save_busy", save_id=save_id)  # another run holds the lease
        return
    try:
        job.run()
    except LeaseLost:
        log.info("notion_save_superseded", save_id=save_id)
    except _Failed as exc:
        job.fail(exc.code, exc.message)
    except NotionError as exc:
        if exc.verdict.action == "fail":
            job.fail(exc.verdict.code, exc.verdict.message)
            return
        job.release()
        metrics.NOTION_SAVES.labels("retry").inc()
        log.warning("notion_save_retry", save_id=save_id, code=exc.code, status=exc.status)
        raise  # Dramatiq's backoff; the sweep hands it over again if the retries run out
    except Exception:
        job.release()
        raise


@register_sweep("notion_saves")
def sweep_notion_saves(session: Session, now: Any) -> int:
    """Hand saves that stalled (a lost message, a killed worker) to the broker again; fail the ones
    that have not got through for a day (each with a notification)."""
    open_states = ("pending", "creating", "appending")
    idle = NOTION_LEASE.free(now)
    expired = list(session.execute(select(NotionSave.id).where(col(NotionSave.state).in_(open_states), idle,
                                                               NotionSave.created_at < now - GIVE_UP)).scalars())
    stale = list(session.execute(select(NotionSave.id).where(col(NotionSave.state).in_(open_states), idle,
                                                             NotionSave.updated_at < now - STALE,
                                                             NotionSave.created_at >= now - GIVE_UP)).scalars())
    if stale:
        session.execute(update(NotionSave).where(col(NotionSave.id).in_(stale)).values(updated_at=now))
    session.commit()
    for save_id in expired:
        job = NotionSaveRun(save_id)
        if job.row is not None:
            job.fail("gave_up", f"the page could not be saved within {GIVE_UP.days} day ({job.row.error or 'Notion kept failing'})")
    for save_id in stale:
        jobs.NOTION_SAVE.send(save_id)
    return len(stale)
