"""sentiment of inbound mail (email_sentiments), at-risk accounts (account_risk), organizations.sentiment_llm

Revision ID: 0008_sentiment
Revises: 0007
Create Date: 2026-12-04 23:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008_sentiment'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('email_sentiments',
    sa.Column('email_id', sa.String(length=24), nullable=False),
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('label', sa.String(length=8), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('cues', sa.JSON(), nullable=False),
    sa.Column('chars', sa.Integer(), nullable=False),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['email_id'], ['emails.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('email_id')
    )
    with op.batch_alter_table('email_sentiments', schema=None) as batch_op:
        batch_op.create_index('ix_email_sentiments_org_label', ['org_id', 'label'], unique=False)
    op.create_table('account_risk',
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('at_risk', sa.Boolean(), nullable=False),
    sa.Column('episode', sa.Integer(), nullable=False),
    sa.Column('since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('evaluated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('org_id', 'account_id')
    )
    # Existing organizations keep their mail inside: the LLM backend is opt-in. A plain ADD COLUMN with a
    # literal default (an expression would make SQLite's batch mode copy the table, which other tables reference).
    false = 'false' if op.get_bind().dialect.name == 'postgresql' else '0'
    op.add_column('organizations', sa.Column('sentiment_llm', sa.Boolean(), nullable=False, server_default=false))


def downgrade() -> None:
    op.drop_table('account_risk')
    with op.batch_alter_table('email_sentiments', schema=None) as batch_op:
        batch_op.drop_index('ix_email_sentiments_org_label')
    op.drop_table('email_sentiments')
    op.drop_column('organizations', 'sentiment_llm')  # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), no table copy
