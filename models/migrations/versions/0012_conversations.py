"""Conversations (threads exposed, with status and assignee), the keys messages join them by,
shared mailboxes with members, and delegates

Revision ID: 0012_conversations
Revises: 0011_privacy
Create Date: 2026-12-05 00:09:56.463616
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012_conversations'
down_revision: str | None = '0011_privacy'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('account_members',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('account_id', sa.String(length=24), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('added_by', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['email_accounts.id'], ),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'user_id', 'role', name='uq_account_member')
    )
    with op.batch_alter_table('account_members', schema=None) as batch_op:
        batch_op.create_index('ix_account_members_user', ['org_id', 'user_id'], unique=False)

    op.create_table('conversation_keys',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('account_id', sa.String(length=24), nullable=False),
    sa.Column('key', sa.String(length=1000), nullable=False),
    sa.Column('conversation_id', sa.String(length=24), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['email_accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'key', name='uq_conversation_key')
    )
    with op.batch_alter_table('conversation_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conversation_keys_conversation_id'), ['conversation_id'], unique=False)

    op.create_table('conversations',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('org_id', sa.String(length=24), nullable=False),
    sa.Column('account_id', sa.String(length=24), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('subject_norm', sa.String(length=500), nullable=False),
    sa.Column('search_text', sa.Text(), server_default='', nullable=False),
    sa.Column('participants', sa.JSON(), nullable=False),
    sa.Column('message_count', sa.Integer(), nullable=False),
    sa.Column('first_message_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_message_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_direction', sa.String(length=8), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('assignee_id', sa.String(length=64), nullable=True),
    sa.Column('assigned_by', sa.String(length=64), nullable=True),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status_changed_by', sa.String(length=64), nullable=True),
    sa.Column('status_changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('awaiting_reply_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('merged_into', sa.String(length=24), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['email_accounts.id'], ),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index('ix_conversations_account_last', ['account_id', 'last_message_at', 'id'], unique=False)
        batch_op.create_index('ix_conversations_assignee', ['org_id', 'assignee_id', 'last_message_at', 'id'], unique=False)
        batch_op.create_index('ix_conversations_awaiting', ['org_id', 'awaiting_reply_since', 'last_message_at', 'id'], unique=False)
        batch_op.create_index('ix_conversations_org_last', ['org_id', 'last_message_at', 'id', 'account_id'], unique=False)
        batch_op.create_index('ix_conversations_status', ['org_id', 'status', 'last_message_at', 'id'], unique=False)
        batch_op.create_index('ix_conversations_subject', ['account_id', 'subject_norm'], unique=False)

    # Plain ADD COLUMNs (no table rebuild on SQLite): every existing mailbox starts private; earlier
    # flag changes were made by the organization's key.
    op.add_column('flag_changes', sa.Column('user_id', sa.String(length=64), nullable=True))
    op.add_column('email_accounts', sa.Column('shared', sa.Boolean(), nullable=False, server_default=sa.false()))



def downgrade() -> None:
    with op.batch_alter_table('email_accounts', schema=None) as batch_op:
        batch_op.drop_column('shared')
    with op.batch_alter_table('flag_changes', schema=None) as batch_op:
        batch_op.drop_column('user_id')

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_subject')
        batch_op.drop_index('ix_conversations_status')
        batch_op.drop_index('ix_conversations_org_last')
        batch_op.drop_index('ix_conversations_awaiting')
        batch_op.drop_index('ix_conversations_assignee')
        batch_op.drop_index('ix_conversations_account_last')

    op.drop_table('conversations')
    with op.batch_alter_table('conversation_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conversation_keys_conversation_id'))

    op.drop_table('conversation_keys')
    with op.batch_alter_table('account_members', schema=None) as batch_op:
        batch_op.drop_index('ix_account_members_user')

    op.drop_table('account_members')
