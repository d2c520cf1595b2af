import shutil
from collections.abc import Generator, Iterator

import pytest

from .generic import RoleContract
from .harness import RUNNING, Node, prepare, running_node, templates

USES_A_NODE = ("node", "bench")
"""Fixtures that give a test the implementation under test (a Node, or a bench holding one)."""


def node_of(request: pytest.FixtureRequest) -> Node | None:
    for name in USES_A_NODE:
        if name in request.fixturenames:
            value = request.getfixturevalue(name)
            n = value if isinstance(value, Node) else getattr(value, "node", None)
            if isinstance(n, Node):
                return n
    return None


@pytest.fixture(autouse=True)
def implementation_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test given an implementation that has died fails at once with its exit status and
    output, instead of waiting out its requests' timeouts."""
    n = node_of(request)
    if n is not None:
        n.check_alive()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, None]:
    """A failed check shows the state and the end of the output of the implementation."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    if report.when != "call" or not report.failed:
        return
    for name in (*USES_A_NODE, "fresh_node"):
        value = funcargs.get(name)
        n = value if isinstance(value, Node) else getattr(value, "node", None)
        if isinstance(n, Node):
            states = ", ".join(f"{r}: {'running' if p.poll() is None else f'exited {p.returncode}'}"
                               for r, p in n.procs.items())
            report.sections.append(("implementation under test",
                                    f"processes: {states or 'none'}\n{n.log_tail()}"))
            return


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On a running node (TOM_CONTRACT_NODE) only the bus contract of every role is checked:
    the role checks play neighbours the node already has, or need the identity the suite
    made, or start and stop processes."""
    if RUNNING not in templates():
        return
    skip = pytest.mark.skip(reason="a running node (TOM_CONTRACT_NODE): this check plays the "
                            "role's neighbours, needs the identity the suite makes or starts "
                            "processes, so it runs only on an implementation the suite starts")
    for item in items:
        cls = getattr(item, "cls", None)
        if not (cls is not None and issubclass(cls, RoleContract)) \
                or "fresh_node" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="module", params=list(templates().items()), ids=lambda kv: kv[0])
def template(request: pytest.FixtureRequest) -> str:
    name, cmd = request.param
    return str(cmd)


@pytest.fixture(scope="module")
def node(template: str, request: pytest.FixtureRequest) -> Iterator[Node]:
    """The implementation serving this module's role (and the roles it needs). Started
    alone, the role is started after the roles it needs, with identity.key watched from
    then on (only crypto may open it)."""
    role = request.module.ROLE
    if template == RUNNING:
        n = running_node()
        try:
            n.wait_ready(role)
            yield n
        finally:
            shutil.rmtree(n.data, ignore_errors=True)
        return
    n = prepare(template)
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
