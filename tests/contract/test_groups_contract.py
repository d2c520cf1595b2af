"""Contract of the groups role (so far: the generic bus contract every role keeps)."""

from .generic import RoleContract

ROLE = "groups"


class TestGroupsContract(RoleContract):
    role = ROLE
