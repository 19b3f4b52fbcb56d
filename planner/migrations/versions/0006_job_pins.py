"""Jobs may pin their hardware: a GPU model, a GPU count and a provider (`--gpu H100-SXM:2 --provider vast`),
kept for every relaunch.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('pin_gpu', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('pin_gpu_count', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('pin_provider', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('pin_provider')
        batch.drop_column('pin_gpu_count')
        batch.drop_column('pin_gpu')
