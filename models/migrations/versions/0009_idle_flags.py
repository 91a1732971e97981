"""IMAP IDLE watchers and two-way mailbox state: watcher leases on accounts, the watchers' heartbeats,
email flags and deleted_on_server, and the flag changes users make through the API

Revision ID: 0009_idle_flags
Revises: 0008_sentiment
Create Date: 2026-12-04 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009_idle_flags'
down_revision: str | None = '0008_sentiment'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('email_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idle_owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('idle_lease_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('idle_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('idle_capable', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('idle_checked_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_email_accounts_idle_lease_until'), ['idle_lease_until'], unique=False)

    # Existing mail was synced before flags were kept on the email: false until the next flag sync.
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seen', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('flagged', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('answered', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('deleted_on_server', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('deleted_on_server_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('email_locations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('modseq', sa.BigInteger(), nullable=True))

    op.create_table('flag_changes',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('email_id', sa.String(length=24), nullable=False),
    sa.Column('account_id', sa.String(length=24), nullable=False),
    sa.Column('seen', sa.Boolean(), nullable=True),
    sa.Column('flagged', sa.Boolean(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.String(length=2000), nullable=True),
    sa.Column('locations', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['email_accounts.id'], ),
    sa.ForeignKeyConstraint(['email_id'], ['emails.id'], ),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('flag_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flag_changes_email_id'), ['email_id'], unique=False)
        batch_op.create_index('ix_flag_changes_pending', ['state', 'created_at'], unique=False)

    op.create_table('idle_watchers',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('held', sa.Integer(), nullable=False),
    sa.Column('idling', sa.Integer(), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('idle_watchers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idle_watchers_heartbeat_at'), ['heartbeat_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('idle_watchers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idle_watchers_heartbeat_at'))
    op.drop_table('idle_watchers')
    with op.batch_alter_table('flag_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_flag_changes_pending')
        batch_op.drop_index(batch_op.f('ix_flag_changes_email_id'))
    op.drop_table('flag_changes')
    with op.batch_alter_table('email_locations', schema=None) as batch_op:
        batch_op.drop_column('modseq')
    with op.batch_alter_table('emails', schema=None) as batch_op:
        for column in ('deleted_on_server_at', 'deleted_on_server', 'answered', 'flagged', 'seen'):
            batch_op.drop_column(column)
    with op.batch_alter_table('email_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_email_accounts_idle_lease_until'))
        for column in ('idle_checked_at', 'idle_capable', 'idle_since', 'idle_lease_until', 'idle_owner'):
            batch_op.drop_column(column)
