"""Each attempt keeps the memory the planner planned for it and what its job measured (issue 23): the
gradient-cache chunk it ran with, planned VRAM per GPU at that chunk and host RAM, the instance's host
RAM as offered, and the peaks the runner reported (VRAM allocated and reserved, the largest rank's;
RSS). An attempt that ran out of memory has the outcome "out-of-memory" (a string column: no change).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

COLUMNS = (('mini_batch_size', sa.Integer()), ('planned_vram_gb', sa.Float()), ('planned_ram_gb', sa.Float()),
           ('ram_gb', sa.Float()), ('peak_vram_allocated_gb', sa.Float()), ('peak_vram_reserved_gb', sa.Float()),
           ('peak_rss_gb', sa.Float()))


def upgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
