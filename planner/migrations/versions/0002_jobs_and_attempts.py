"""Jobs, attempts and campaigns: the supervisor's state (planner.records).

DateTimes are stored as naive UTC (pricing.store.UTCDateTime).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaigns',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('budget_usd', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('jobs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('campaign_id', sa.String(length=40), nullable=True),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('depends_on', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('backend', sa.String(length=16), nullable=False),
    sa.Column('spot', sa.String(length=16), nullable=False),
    sa.Column('max_price_per_hour', sa.Float(), nullable=True),
    sa.Column('budget_usd', sa.Float(), nullable=True),
    sa.Column('requirements', sa.Text(), nullable=False),
    sa.Column('max_failures', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('lease_owner', sa.String(length=100), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_campaign', ['campaign_id'], unique=False)
        batch_op.create_index('ix_jobs_state', ['state'], unique=False)

    op.create_table('attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('offer_key', sa.String(length=200), nullable=True),
    sa.Column('gpu_model', sa.String(length=100), nullable=True),
    sa.Column('gpu_count', sa.Integer(), nullable=False),
    sa.Column('tier', sa.String(length=32), nullable=True),
    sa.Column('location', sa.String(length=200), nullable=True),
    sa.Column('spot', sa.Boolean(), nullable=False),
    sa.Column('usd_per_hour', sa.Float(), nullable=False),
    sa.Column('billing_seconds', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.String(length=200), nullable=True),
    sa.Column('handle', sa.Text(), nullable=False),
    sa.Column('outcome', sa.String(length=24), nullable=False),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('launched_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('polled_at', sa.DateTime(), nullable=True),
    sa.Column('poll_failures', sa.Integer(), nullable=False),
    sa.Column('dollars', sa.Float(), nullable=False),
    sa.Column('progress', sa.Text(), nullable=False),
    sa.Column('measured_tflops', sa.Float(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'number', name='uq_attempts_job_number')
    )
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.create_index('ix_attempts_gpu', ['gpu_model'], unique=False)
        batch_op.create_index('ix_attempts_outcome', ['outcome'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_outcome')
        batch_op.drop_index('ix_attempts_gpu')

    op.drop_table('attempts')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state')
        batch_op.drop_index('ix_jobs_campaign')

    op.drop_table('jobs')
    op.drop_table('campaigns')
