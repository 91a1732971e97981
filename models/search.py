"""Full-text search over emails: the ``email_search`` table and its index on each database.

One row per searchable email (subject, participants, attachment names, body text including the
text of the HTML part), written by the ingest chain's parse stage (:func:`write_docs`) and by
accepting a send. The index is kept by the database itself:

* PostgreSQL: a ``tsv tsvector`` column filled by a ``BEFORE INSERT OR UPDATE`` trigger (the body
  stemmed with the email's language configuration, every part also unstemmed with ``simple`` so
  exact words and addresses always match), a GIN index on it; queries use ``websearch_to_tsquery``,
  ``ts_rank`` and ``ts_headline``.
* SQLite: an FTS5 table with external content (``email_search_fts``, porter + unicode61 with
  diacritics removed) kept by insert/update/delete triggers on ``email_search``; ``bm25`` and
  ``snippet``.

Deleting an email deletes its search row (``ON DELETE CASCADE`` on both databases; SQLite runs
with ``foreign_keys=ON``), and the FTS5 triggers follow, so erase, retention and account deletion
need no call here. :func:`forget` is there for code that scrubs an email row instead of deleting it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Column, Connection, Float, Index, Select, Subquery, Table, Text, event, func, literal_column, select, text
from sqlalchemy import cast as sa_cast
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, Session, SQLModel, col, delete

from models.base import ts_field
from models.emails import Email

__all__ = ["EmailSearch", "SEARCH_DDL_OBJECTS", "SEARCH_TABLE", "forget", "fts5_query", "headline", "highlights",
           "install_search_ddl", "marked", "matches", "order_by_rank", "prepare_search", "write_docs"]

MARK_START, MARK_END = "\x01", "\x02"  # highlight markers: the text is HTML-escaped first, then they become <mark>


class EmailSearch(SQLModel, table=True):
    """The searchable text of one email (the index itself is database-specific, see the module doc)."""

    __tablename__ = "email_search"
    __table_args__ = (Index("ix_email_search_org_at", "org_id", "at"),)

    email_id: str = Field(primary_key=True, max_length=24, foreign_key="emails.id", ondelete="CASCADE")
    org_id: str = Field(max_length=24)
    language: str = Field(default="simple", max_length=32, description="PostgreSQL text search configuration")
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    participants: str = Field(default="", sa_column=Column(Text, nullable=False))
    attachments: str = Field(default="", sa_column=Column(Text, nullable=False))
    body: str = Field(default="", sa_column=Column(Text, nullable=False))
    at: datetime | None = ts_field(default=None, description="the email's time (received, else sent): newest matches first")


SEARCH_TABLE = cast(Table, EmailSearch.__table__)  # type: ignore[attr-defined]  # SQLModel sets it at class creation

#: Database objects made by :func:`install_search_ddl`, not by the models (Alembic's comparison skips them).
SEARCH_DDL_OBJECTS = ("email_search_fts", "ix_email_search_tsv")
_FTS_SHADOW = re.compile(r"^email_search_fts(_data|_idx|_content|_docsize|_config)?$")

_PG_DDL = (
    "ALTER TABLE email_search ADD COLUMN IF NOT EXISTS tsv tsvector",
    # In the row, not in TOAST: a search checks the tsvector of each of the newest rows until it has
    # its window of matches, and an out-of-line value costs a TOAST index lookup and two chunk reads
    # per row (the body, never read by that walk, goes out of line instead). Migration 0014.
    "ALTER TABLE email_search ALTER COLUMN tsv SET STORAGE MAIN",
    """
CREATE OR REPLACE FUNCTION email_search_tsv() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE cfg regconfig;
BEGIN
  SELECT oid::regconfig INTO cfg FROM pg_ts_config WHERE cfgname = NEW.language;
  IF cfg IS NULL THEN cfg := 'simple'::regconfig; END IF;
  NEW.tsv := setweight(to_tsvector(cfg, NEW.subject), 'A') || setweight(to_tsvector('simple', NEW.subject), 'A')
          || setweight(to_tsvector('simple', NEW.participants), 'B')
          || setweight(to_tsvector(cfg, NEW.attachments), 'C') || setweight(to_tsvector('simple', NEW.attachments), 'C')
          || setweight(to_tsvector(cfg, NEW.body), 'D') || setweight(to_tsvector('simple', NEW.body), 'D');
  RETURN NEW;
END $$""",
    "DROP TRIGGER IF EXISTS email_search_tsv ON email_search",
    "CREATE TRIGGER email_search_tsv BEFORE INSERT OR UPDATE OF language, subject, participants, attachments, body "
    "ON email_search FOR EACH ROW EXECUTE FUNCTION email_search_tsv()",
    "CREATE INDEX IF NOT EXISTS ix_email_search_tsv ON email_search USING gin (tsv)",
)
_COLS = "subject, participants, attachments, body"
_NEW = "new.subject, new.participants, new.attachments, new.body"
_OLD = "old.subject, old.participants, old.attachments, old.body"
_SQLITE_DDL = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS email_search_fts USING fts5({_COLS}, content='email_search', "
    "content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER IF NOT EXISTS email_search_ai AFTER INSERT ON email_search BEGIN "
    f"INSERT INTO email_search_fts(rowid, {_COLS}) VALUES (new.rowid, {_NEW}); END",
    f"CREATE TRIGGER IF NOT EXISTS email_search_ad AFTER DELETE ON email_search BEGIN "
    f"INSERT INTO email_search_fts(email_search_fts, rowid, {_COLS}) VALUES ('delete', old.rowid, {_OLD}); END",
    f"CREATE TRIGGER IF NOT EXISTS email_search_au AFTER UPDATE ON email_search BEGIN "
    f"INSERT INTO email_search_fts(email_search_fts, rowid, {_COLS}) VALUES ('delete', old.rowid, {_OLD}); "
    f"INSERT INTO email_search_fts(rowid, {_COLS}) VALUES (new.rowid, {_NEW}); END",
)


def install_search_ddl(conn: Connection) -> None:
    """Create the dialect's index, column and triggers for ``email_search`` (idempotent)."""
    for stmt in _PG_DDL if conn.dialect.name == "postgresql" else _SQLITE_DDL:
        conn.exec_driver_sql(stmt)


def is_search_ddl_object(name: str | None, type_: str, table_name: str | None) -> bool:
    """Whether a reflected object is one of :func:`install_search_ddl`'s (for Alembic's ``include_object``)."""
    if name is None:
        return False
    if type_ == "table":
        return bool(_FTS_SHADOW.match(name))
    if type_ == "index":
        return name in SEARCH_DDL_OBJECTS
    return type_ == "column" and table_name == "email_search" and name == "tsv"


def _after_create(target: Table, connection: Connection, **_kw: Any) -> None:
    install_search_ddl(connection)


event.listen(SEARCH_TABLE, "after_create", _after_create)  # metadata.create_all (tests) gets the index too


def write_docs(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace the search rows ``{email_id, org_id, language, subject, participants, attachments, body, at}``."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    table = SEARCH_TABLE
    ins = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    stmt = ins.on_conflict_do_update(index_elements=["email_id"], set_={
        c: ins.excluded[c] for c in ("org_id", "language", "subject", "participants", "attachments", "body", "at")})
    for i in range(0, len(rows), 500):
        session.execute(stmt, [dict(r) for r in rows[i : i + 500]])


def forget(session: Session, email_ids: Iterable[str]) -> None:
    """Drop emails from the index (deleting the email rows does this by itself)."""
    ids = list(email_ids)
    for i in range(0, len(ids), 500):
        session.execute(delete(EmailSearch).where(col(EmailSearch.email_id).in_(ids[i : i + 500])))


# ---- queries ---------------------------------------------------------------------------------------------

_FTS_TOKEN = re.compile(r'"([^"]*)"?|(\S+)')
_FTS_WORD = re.compile(r"\w+", re.UNICODE)


def fts5_query(q: str) -> str | None:
    """A user's web-search-style query as an FTS5 expression that cannot be a syntax error.

    Words and ``"quoted phrases"`` must all match (AND), ``or`` between two terms makes either
    do, a leading ``-`` excludes a term (when something else is required), ``word*`` is a prefix.
    Punctuation splits words, as the tokenizer does. None when nothing searchable is left.
    """
    required: list[str] = []
    excluded: list[str] = []
    pending_or = False
    for m in _FTS_TOKEN.finditer(q):
        phrase, word = m.group(1), m.group(2)
        if word is not None and word.lower() == "or" and required:
            pending_or = True
            continue
        negate = word is not None and word.startswith("-")
        raw = phrase if phrase is not None else word.lstrip("-")
        prefix = phrase is None and raw.endswith("*")
        words = _FTS_WORD.findall(raw)
        if not words:
            continue
        term = '"' + " ".join(words) + '"' + ("*" if prefix else "")
        if negate:
            excluded.append(term)
        elif pending_or:
            required[-1] = f"({required[-1]} OR {term})"
        else:
            required.append(term)
        pending_or = False
    if not required:
        return None
    expr = " AND ".join(required)
    for term in excluded:
        expr = f"({expr}) NOT {term}"
    return expr


_FTS = sa_table("email_search_fts", sa_column("rowid"))


def _fts_from() -> Any:
    es = SEARCH_TABLE
    return _FTS.join(es, literal_column("email_search.rowid") == _FTS.c.rowid)


def _pg_tsquery(q: str, language: str) -> ColumnElement[Any]:
    exact = func.websearch_to_tsquery(sa_cast("simple", REGCONFIG), q)
    stemmed = func.websearch_to_tsquery(sa_cast(language, REGCONFIG), q)
    return exact.op("||")(stemmed)


def prepare_search(session: Session) -> None:
    """Per-transaction planner settings for a search: on PostgreSQL no parallel workers (starting
    them costs more than the few hundred rows a search reads, more so on a busy machine)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))


#: PostgreSQL ranks this many of the newest matches (found through the (org_id, at) index when a
#: term is common, through the GIN index when it is rare), so a query costs the same at any size.
RANK_WINDOW = 500


def order_by_rank(found: Subquery, email_id: Any = None) -> list[Any]:
    """Best first, in the same order on every page: rank, then (PostgreSQL) newest, then id."""
    ties = [found.c.at.desc()] if "at" in found.c else []
    return [found.c.rank.desc(), *ties, (found.c.email_id if email_id is None else email_id).desc()]


def matches(dialect: str, org_id: str, q: str, language: str = "english", top: int | None = None,
            within: Select[Any] | None = None, keep: int | None = None) -> Subquery | None:
    """``(email_id, rank)`` of the org's emails matching ``q`` (and ``at`` on PostgreSQL); a higher rank is a
    better match; :func:`order_by_rank` orders them.

    PostgreSQL: the newest ``top`` (default :data:`RANK_WINDOW`) matches among the emails
    ``within`` selects (a select from ``emails`` with the caller's filters), ranked with
    ``ts_rank`` (weights and term frequency; ``ts_rank_cd``'s cover density cost 20-60 times as
    much per row, most with phrases and frequent words, whose many positions it pairs up). SQLite:
    every match, ranked with ``bm25``, the best ``top`` of them kept (the caller widens it when its
    filters leave too few). ``keep``: on PostgreSQL only the best
    ``keep`` ranked rows leave the subquery (the caller's page), so the emails table is read for
    those alone. None when the query has nothing searchable in it (no results, not an error).
    """
    es = SEARCH_TABLE
    if dialect == "postgresql":
        tsv: ColumnElement[Any] = literal_column("email_search.tsv")
        tsq = _pg_tsquery(q, language)
        pg_rank = func.ts_rank(tsv, tsq, 1).cast(Float).label("rank")
        cols = (es.c.email_id, pg_rank, es.c.at)
        base = (within.with_only_columns(*cols).join(es, es.c.email_id == col(Email.id)) if within is not None
                else select(*cols))
        window = (base.where(es.c.org_id == org_id, tsv.op("@@")(tsq)).order_by(es.c.at.desc())
                  .limit(top or RANK_WINDOW).subquery("window"))
        ranked = select(window.c.email_id, window.c.rank, window.c.at)
        if keep:  # ties by time first: comparing the ids of hundreds of equal ranks costs more than the ranking
            ranked = ranked.order_by(*order_by_rank(window)).limit(keep)
        return ranked.subquery("search")
    expr = fts5_query(q)
    if expr is None:
        return None
    # bm25 is lower for better matches; weights: subject, participants, attachments, body
    rank: Any = (-literal_column("bm25(email_search_fts, 8.0, 4.0, 2.0, 1.0)")).label("rank")
    stmt = (select(es.c.email_id, rank).select_from(_fts_from())
            .where(text("email_search_fts MATCH :fts_q").bindparams(fts_q=expr), es.c.org_id == org_id))
    return (stmt.order_by(rank.desc()).limit(top) if top else stmt).subquery("search")


def marked(fragment: str) -> str:
    """A highlight from the database (matches between the marker characters) as HTML: escaped, matches in ``<mark>``."""
    return html.escape(fragment, quote=False).replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")


#: ts_headline reads this many characters of the body, around the first place a query word occurs.
HEADLINE_SPAN = 1200
_HEADLINE_OPTS = (f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=24, MinWords=8, MaxFragments=2, "
                  "FragmentDelimiter=\" … \"")


def _headline_words(q: str) -> list[str]:
    """The query's words, any of which a highlight marks (phrase and negation operators make ts_headline slow,
    and marking each matched word is what a reader needs)."""
    return [w for token in q.replace('"', " ").split() if not token.startswith("-")
            for w in _FTS_WORD.findall(token) if w.lower() != "or"]


def headline(q: str, language: str = "english") -> ColumnElement[str] | None:
    """PostgreSQL: an ``email_search`` column expression, the highlight of the row's text for ``q``
    (pass it through :func:`marked`); None when the query has no words to mark.

    ts_headline parses and normalizes every word of the text it is given, so it is given the
    subject, :data:`HEADLINE_SPAN` characters of the body around the first occurrence of a query
    word (its start when none occurs as written, e.g. a stemmed match) and the attachment names.
    """
    words = _headline_words(q)
    if not words:
        return None
    es = SEARCH_TABLE
    tsq = _pg_tsquery(" or ".join(words), language)
    lowered = func.lower(func.left(es.c.body, 20_000))
    found = [func.nullif(func.strpos(lowered, w), 0) for w in dict.fromkeys(w.lower() for w in words[:8])]
    first = func.least(*found) if len(found) > 1 else found[0]
    start = func.greatest(func.coalesce(first, 1) - HEADLINE_SPAN // 4, 1)
    doc = func.concat_ws(" · ", es.c.subject, func.substr(es.c.body, start, HEADLINE_SPAN), es.c.attachments)
    return cast(ColumnElement[str], func.ts_headline(sa_cast("simple", REGCONFIG), doc, tsq, _HEADLINE_OPTS))


def highlights(session: Session, email_ids: Sequence[str], q: str, language: str = "english") -> dict[str, str]:
    """A short passage of each email around the matched words, HTML-escaped, matches in ``<mark>``."""
    if not email_ids:
        return {}
    es = SEARCH_TABLE
    if session.get_bind().dialect.name == "postgresql":
        mark = headline(q, language)
        if mark is None:
            return {}
        stmt = select(es.c.email_id, mark).where(es.c.email_id.in_(list(email_ids)))
        return {eid: marked(h) for eid, h in session.execute(stmt)}
    expr = fts5_query(q)
    if expr is None:
        return {}
    rowids = dict(session.execute(select(literal_column("email_search.rowid"), es.c.email_id).select_from(es)
                                  .where(es.c.email_id.in_(list(email_ids)))).all())
    if not rowids:
        return {}
    stmt = (select(_FTS.c.rowid, literal_column(f"snippet(email_search_fts, -1, '{MARK_START}', '{MARK_END}', ' … ', 24)"))
            .where(text("email_search_fts MATCH :fts_q").bindparams(fts_q=expr), _FTS.c.rowid.in_(list(rowids))))
    return {rowids[rowid]: marked(h) for rowid, h in session.execute(stmt)}
