import shutil
from collections.abc import Iterator

import pytest

from .harness import Node, prepare, templates


@pytest.fixture(scope="module", params=list(templates().items()), ids=lambda kv: kv[0])
def template(request: pytest.FixtureRequest) -> str:
    name, cmd = request.param
    return str(cmd)


@pytest.fixture(scope="module")
def node(template: str, request: pytest.FixtureRequest) -> Iterator[Node]:
    """The implementation serving this module's role (and the roles it needs). Started
    alone, the role is started after the roles it needs, with identity.key watched from
    then on (only crypto may open it)."""
    n = prepare(template)
    role = request.module.ROLE
    needs = getattr(request.module, "NEEDS", ())
    try:
        if n.all_in_one:
            n.start(*needs, role)
        else:
            if needs:
                n.start(*needs)
            if role != "crypto":
                n.watch_key()
            n.start(role)
        yield n
    finally:
        n.stop()
        shutil.rmtree(n.data, ignore_errors=True)


@pytest.fixture()
def fresh_node(template: str, request: pytest.FixtureRequest) -> Iterator[Node]:
    """A node started for one test (shutdown and signal tests end it)."""
    n = prepare(template)
    try:
        n.start(request.module.ROLE)
        yield n
    finally:
        n.stop()
        shutil.rmtree(n.data, ignore_errors=True)
