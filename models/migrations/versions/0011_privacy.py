"""Privacy and deliverability: email kind and bounces, organization retention, privacy jobs,
erased-message hashes

Revision ID: 0011_privacy
Revises: 0010_webhooks
Create Date: 2026-12-05 00:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011_privacy'
down_revision: str | None = '0010_webhooks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild on SQLite); the defaults fill existing rows.
    op.add_column('emails', sa.Column('kind', sa.String(length=16), nullable=False, server_default='message'))
    op.add_column('emails', sa.Column('bounces', sa.JSON(), nullable=False, server_default='[]'))
    op.add_column('organizations', sa.Column('retention_days', sa.Integer(), nullable=True))
    op.add_column('organizations', sa.Column('retention_run_at', sa.DateTime(timezone=True), nullable=True))

    op.create_table('privacy_jobs',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=320), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('result_key', sa.String(length=500), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('privacy_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_privacy_jobs_org_id'), ['org_id'], unique=False)
        batch_op.create_index('ix_privacy_jobs_state', ['state', 'updated_at'], unique=False)

    op.create_table('erased_messages',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('account_id', sa.String(length=24), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'key_hash', name='uq_erased_message')
    )
    with op.batch_alter_table('erased_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erased_messages_org_id'), ['org_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('erased_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erased_messages_org_id'))
    op.drop_table('erased_messages')
    with op.batch_alter_table('privacy_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_privacy_jobs_state')
        batch_op.drop_index(batch_op.f('ix_privacy_jobs_org_id'))
    op.drop_table('privacy_jobs')
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('retention_run_at')
        batch_op.drop_column('retention_days')
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.drop_column('bounces')
        batch_op.drop_column('kind')
