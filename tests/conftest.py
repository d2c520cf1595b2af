"""The whole suite: nodes started by tests do not ask the machine's gateway for a port
mapping (`[transport] port_mapping`): that would send PCP/NAT-PMP datagrams to a router
outside the machine. The NAT lab's nodes are the exception (tom/lab.py `LabNode.tom`): their
gateway is the lab's own router namespace, and tests/e2e/test_portmap.py maps through it."""

import os

os.environ["TOM_TRANSPORT__PORT_MAPPING"] = "false"
