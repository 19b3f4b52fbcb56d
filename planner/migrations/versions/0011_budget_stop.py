"""A budget stop that lets the job save its work first (issue 24): an attempt whose job would pass a budget is
asked to stop gracefully (SIGTERM: it checkpoints and exits 75) and is "stopping" until it has (a string column:
no change); it keeps when the stop was asked, so a restarted supervisor knows when the grace runs out, and why.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

COLUMNS = (('stop_requested_at', sa.DateTime()), ('stop_reason', sa.Text()))


def upgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
