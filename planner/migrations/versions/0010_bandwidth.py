"""Bandwidth billed per byte (issue 21): offers keep the provider's $/GB into and out of the instance (Vast
inet_down_cost / inet_up_cost), and each attempt keeps those prices and the traffic planned for it (GB
downloaded at start, pushed at the end, one checkpoint's size), so settlement bills what the provider bills.
Offers also keep disk billed apart from the GPU price ($/GB-month: RunPod's container disk).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

OFFER_COLUMNS = ('download_usd_per_gb', 'upload_usd_per_gb', 'disk_usd_per_gb_month')
ATTEMPT_COLUMNS = ('download_usd_per_gb', 'upload_usd_per_gb', 'download_gb', 'upload_gb', 'checkpoint_gb')


def upgrade() -> None:
    with op.batch_alter_table('offers') as batch:
        for name in OFFER_COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
    with op.batch_alter_table('attempts') as batch:
        for name in ATTEMPT_COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        for name in reversed(ATTEMPT_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table('offers') as batch:
        for name in reversed(OFFER_COLUMNS):
            batch.drop_column(name)
