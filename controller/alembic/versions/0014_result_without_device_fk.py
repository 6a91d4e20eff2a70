"""results no longer carry a foreign key to device: its check was most of PostgreSQL's
time per stored result (16 of 26 us of CPU); a result's device is its stream's, and the
stream row, which keeps its own key to device, is locked while its results are stored

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite reflects the key without a name: batch mode names it by this convention.
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
SQLITE_NAME = "fk_result_device_id_device"
POSTGRES_NAME = "result_device_id_fkey"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("result", naming_convention=NAMING) as batch:
            batch.drop_constraint(SQLITE_NAME, type_="foreignkey")
    else:
        op.drop_constraint(POSTGRES_NAME, "result", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("result", naming_convention=NAMING) as batch:
            batch.create_foreign_key(SQLITE_NAME, "device", ["device_id"], ["id"])
    else:
        op.create_foreign_key(POSTGRES_NAME, "result", "device", ["device_id"], ["id"])
