"""emails.suspicious_sender: the From display name impersonates another address

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows were parsed before the check existed: false (a re-parse would set it).
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.add_column(sa.Column('suspicious_sender', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.drop_column('suspicious_sender')
