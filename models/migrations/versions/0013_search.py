"""full-text search: email_search (one row per email), tsvector + GIN on PostgreSQL, FTS5 on SQLite

The index objects are plain DDL kept by the database (a tsvector trigger on PostgreSQL, FTS5
external-content triggers on SQLite); deleting an email cascades to its search row. Existing mail
is indexed by the ``search_backfill`` sweep after the upgrade (it needs the HTML-to-text stage,
which a migration does not import).

Revision ID: 0013_search
Revises: 0012_conversations
Create Date: 2026-12-05 00:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013_search'
down_revision: str | None = '0012_conversations'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same statements as models/search.py's install_search_ddl, written out so the migration stays fixed.
PG_DDL = (
    "ALTER TABLE email_search ADD COLUMN IF NOT EXISTS tsv tsvector",
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
SQLITE_DDL = (
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


def upgrade() -> None:
    op.create_table('email_search',
    sa.Column('email_id', sa.String(length=24), nullable=False),
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('language', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('participants', sa.Text(), nullable=False),
    sa.Column('attachments', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['email_id'], ['emails.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('email_id')
    )
    with op.batch_alter_table('email_search', schema=None) as batch_op:
        batch_op.create_index('ix_email_search_org_at', ['org_id', 'at'], unique=False)
    bind = op.get_bind()
    for stmt in PG_DDL if bind.dialect.name == "postgresql" else SQLITE_DDL:
        bind.exec_driver_sql(stmt)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql("DROP TABLE IF EXISTS email_search")
        bind.exec_driver_sql("DROP FUNCTION IF EXISTS email_search_tsv()")
    else:
        for name in ("email_search_ai", "email_search_ad", "email_search_au"):
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        bind.exec_driver_sql("DROP TABLE IF EXISTS email_search_fts")
        bind.exec_driver_sql("DROP TABLE IF EXISTS email_search")
