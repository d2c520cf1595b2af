"""Contract of the transport role (so far: the generic bus contract every role keeps)."""

from .generic import RoleContract

ROLE = "transport"


class TestTransportContract(RoleContract):
    role = ROLE
