"""Contract of the backup role (so far: the generic bus contract every role keeps)."""

from .generic import RoleContract

ROLE = "backup"


class TestBackupContract(RoleContract):
    role = ROLE
