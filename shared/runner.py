"""Process entry points: one service per process, or several in one (all-in-one mode).

``python -m services.<role> [--data DIR] [--config F] [--endpoints F] [--log-level L]``
runs one service; ``python -m services [ROLE ...]`` runs several (default: all five) in one
process, where they call and hear each other through a local hub (``shared/localbus.py``, no
ZeroMQ between them), while still binding the endpoints file's addresses so that the CLI,
apps and the contract suite reach each service exactly as in the five-process node.

Exit status: 0 after SIGTERM, SIGINT or ``sys.shutdown``; 2 when the configuration, endpoints
or identity cannot be used (the message says what to fix); 1 on a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import zmq

from . import config as cfg
from .endpoints import ROLES, EndpointsError
from .endpoints import load as load_endpoints
from .localbus import Hub
from .paths import DataDir, default_data_dir
from .service import Service, ServiceContext, StartupError


def service_class(role: str) -> type[Service]:
    if role not in ROLES:
        raise StartupError(f"unknown service {role!r}; choose from {', '.join(ROLES)}")
    cls: type[Service] = importlib.import_module(f"services.{role}.shell").SERVICE
    return cls


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--data", type=Path, default=None,
                   help="node data directory (default: $TOM_HOME or ~/.tom)")
    p.add_argument("--config", type=Path, default=None, help="node.toml (default: DATA/node.toml)")
    p.add_argument("--endpoints", type=Path, default=None,
                   help="endpoints file (default: DATA/endpoints.toml)")
    p.add_argument("--log-level", default=None, help="debug, info, warning or error")
    return p


def load_context(args: argparse.Namespace) -> ServiceContext:
    data = DataDir(args.data or default_data_dir())
    try:
        config = cfg.read(args.config or data.config)
        endpoints = load_endpoints(args.endpoints or data.endpoints)
    except (cfg.ConfigError, EndpointsError) as e:
        raise StartupError(str(e)) from None
    return ServiceContext(data.root, endpoints, config)


def setup_logging(context: ServiceContext, level: str | None, name: str) -> None:
    node = context.section("node", cfg.NodeSection)
    stream = sys.stdout if node.log_stream == "stdout" else sys.stderr
    handler = logging.StreamHandler(stream)
    if node.log_format == "json":
        handler.setFormatter(JsonFormatter(name))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=(level or node.log_level).upper(), handlers=[handler])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, service, pid, logger, msg (and
    exc with the traceback, if any)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "service": self.service,
            "pid": record.process, "logger": record.name, "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


async def serve(services: list[Service]) -> None:
    """Run the services until a signal arrives or one of them stops; then let each hand its
    duties on (``Service.leave``) and stop them all.

    In the all-in-one mode the services share one process, so ``sys.shutdown`` sent to any
    of them ends the process (and supervisord, if it runs the node, starts it again).
    """
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(s.run()) for s in services]
            waiter = tg.create_task(signalled.wait())
            await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            # each service hands its duties on while the others still serve (briefly), then
            # they all stop
            await asyncio.gather(*(s.leave() for s in services))
            for s in services:
                s.request_stop()
            waiter.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def build(roles: list[str], context: ServiceContext, all_in_one: bool) -> list[Service]:
    if not all_in_one:
        return [service_class(roles[0])(context)]
    zctx: zmq.Context = zmq.Context.instance()
    hub = Hub()  # the services call and hear each other without ZeroMQ (shared/localbus.py)
    return [service_class(r)(context, zctx=zctx, hub=hub) for r in roles]


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``[node] event_loop`` asks for: uvloop's, or None for asyncio's. "auto"
    takes uvloop when it is installed; "uvloop" without it is a configuration error."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise StartupError("[node] event_loop = \"uvloop\" but uvloop is not installed "
                               "(pip install uvloop, or choose \"asyncio\")") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(roles: list[str], argv: list[str] | None, all_in_one: bool, prog: str) -> int:
    p = parser(prog)
    if all_in_one:
        p.add_argument("roles", nargs="*", default=list(ROLES), help="services to run")
    args = p.parse_args(argv)
    if all_in_one:
        roles = args.roles
    try:
        context = load_context(args)
        setup_logging(context, args.log_level, prog)
        services = build(roles, context, all_in_one)
        factory = loop_factory(context.section("node", cfg.NodeSection).event_loop)
    except (StartupError, cfg.ConfigError, EndpointsError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(services))
    except ExceptionGroup as eg:
        failed = eg.subgroup((zmq.ZMQError, StartupError))
        if failed is None:
            raise
        first = failed.exceptions[0]
        why = "cannot open the bus sockets: " if isinstance(first, zmq.ZMQError) else ""
        print(f"{prog}: {why}{first}", file=sys.stderr)
        return 2
    return 0


def main(role: str, argv: list[str] | None = None) -> int:
    return run([role], argv, all_in_one=False, prog=f"tom-{role}")
