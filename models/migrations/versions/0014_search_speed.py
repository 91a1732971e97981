"""search speed: the PostgreSQL tsvector stays in the row (STORAGE MAIN) instead of TOAST

A search walks the organization's newest search rows (``ix_email_search_org_at``) checking each
one's tsvector until it has its window of matches; stored out of line, each check cost a TOAST
index lookup and two chunk reads (~2.8 KB per email). With ``SET STORAGE MAIN`` the tsvector stays
in the row (PostgreSQL moves the body out of line instead; a tsvector is only stored out of line
when the row could not fit a page otherwise). Existing rows are rewritten so that their tsvector
moves in (``tsv || ''`` is the same value, detoasted, so the toaster places it anew). Nothing
changes on SQLite (FTS5 keeps its own index).

Revision ID: 0014_search_speed
Revises: 0013_search
Create Date: 2026-12-05 03:20:00.000000
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0014_search_speed'
down_revision: str | None = '0013_search'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql("ALTER TABLE email_search ALTER COLUMN tsv SET STORAGE MAIN")
    bind.exec_driver_sql("UPDATE email_search SET tsv = tsv || ''::tsvector WHERE tsv IS NOT NULL")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql("ALTER TABLE email_search ALTER COLUMN tsv SET STORAGE EXTENDED")
