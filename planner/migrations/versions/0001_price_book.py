"""Price book: snapshots, offers, hourly aggregates, refresh leases.

DateTimes are stored as naive UTC (pricing.store.UTCDateTime).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('price_hourly',
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('gpu_model', sa.String(length=100), nullable=False),
    sa.Column('tier', sa.String(length=32), nullable=False),
    sa.Column('spot', sa.Boolean(), nullable=False),
    sa.Column('hour', sa.DateTime(), nullable=False),
    sa.Column('min_usd', sa.Float(), nullable=False),
    sa.Column('median_usd', sa.Float(), nullable=False),
    sa.Column('offer_count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'gpu_model', 'tier', 'spot', 'hour')
    )
    with op.batch_alter_table('price_hourly', schema=None) as batch_op:
        batch_op.create_index('ix_price_hourly_gpu_hour', ['gpu_model', 'hour'], unique=False)

    op.create_table('refresh_leases',
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=100), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('provider')
    )
    op.create_table('snapshots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('offer_count', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.create_index('ix_snapshots_provider_status_id', ['provider', 'status', 'id'], unique=False)

    op.create_table('offers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('offer_key', sa.String(length=200), nullable=False),
    sa.Column('gpu_model', sa.String(length=100), nullable=False),
    sa.Column('gpu_name_raw', sa.String(length=200), nullable=False),
    sa.Column('known_gpu', sa.Boolean(), nullable=False),
    sa.Column('vram_gb', sa.Float(), nullable=False),
    sa.Column('gpu_count', sa.Integer(), nullable=False),
    sa.Column('on_demand_usd_per_gpu_hour', sa.Float(), nullable=True),
    sa.Column('spot_usd_per_gpu_hour', sa.Float(), nullable=True),
    sa.Column('tier', sa.String(length=32), nullable=False),
    sa.Column('location', sa.String(length=200), nullable=True),
    sa.Column('available', sa.Boolean(), nullable=False),
    sa.Column('reliability', sa.Float(), nullable=True),
    sa.Column('vcpus', sa.Float(), nullable=True),
    sa.Column('ram_gb', sa.Float(), nullable=True),
    sa.Column('disk_gb', sa.Float(), nullable=True),
    sa.Column('stock', sa.String(length=32), nullable=True),
    sa.Column('fetched_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.create_index('ix_offers_snapshot_price', ['snapshot_id', 'gpu_model'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.drop_index('ix_offers_snapshot_price')

    op.drop_table('offers')
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_index('ix_snapshots_provider_status_id')

    op.drop_table('snapshots')
    op.drop_table('refresh_leases')
    with op.batch_alter_table('price_hourly', schema=None) as batch_op:
        batch_op.drop_index('ix_price_hourly_gpu_hour')

    op.drop_table('price_hourly')
