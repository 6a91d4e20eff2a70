"""the device list's order as an index: a page of the console's device list (and a
deep one) is read off it instead of sorting the whole table

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_device_created_at_id", "device", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_device_created_at_id", table_name="device")
