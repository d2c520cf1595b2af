"""Addresses the transport is given: checked where they enter, never resolved on the loop.

Theory of operation. A host reaches the transport from two places:

* **peers**, in control frames (the address a peer sees us at, its own local candidates, a
  relay's introduction). Only literal IP addresses are taken from them: a host *name* is
  refused (``NameRefused``, counted ``names_refused``), so nothing a stranger says can make the
  node ask a resolver (a resolver that never answers would otherwise freeze the event loop,
  since ``sendto`` resolves names synchronously).
* **the node's own side** (``transport.connect`` from the router, whose addresses come from
  the user's ``tom chat ID@host:port`` and from the peer table): a literal is used as it is; a
  host name is resolved by the shell off the event loop, with a timeout (core.py).

Either way a host is first checked as text (:func:`parse_host`): a NUL byte, a control
character, a label over 63 bytes or a name over 253 would otherwise raise out of ``sendto``
(``ValueError``/``UnicodeError``) in the shell's flush and lose the rest of that batch.
"""

from __future__ import annotations

import ipaddress
import re

MAX_NAME = 253
MAX_LABEL = 63
_LABEL = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")

Addr = tuple[str, int]


class NameRefused(ValueError):
    """A host name where only a literal IP address is accepted (from a peer)."""


def parse_host(host: str) -> tuple[str, bool]:
    """``(host, literal)``: a literal IP address (normalised, :func:`normal`), or a
    well-formed host name.

    ValueError if it is neither: empty, too long, a control character or whitespace, a
    scope id (``%eth0``), or a label that is empty, over 63 bytes or not letters, digits,
    ``-`` and ``_`` (after IDNA encoding), or a numeric last label (``999.1.1.1``)."""
    if not host or len(host) > MAX_NAME or "%" in host \
            or any(ord(c) < 0x21 or 0x7F <= ord(c) < 0xA0 for c in host):
        raise ValueError("not a host: empty, too long, or with a control character, "
                         "space or scope id")
    try:
        return normal(host.strip("[]") if ":" in host else host), True
    except ValueError:
        pass
    try:
        name = host.encode("idna")
    except UnicodeError:
        raise ValueError("not a host name: a label is empty or over 63 bytes") from None
    labels = name[:-1].split(b".") if name.endswith(b".") else name.split(b".")
    if len(name) > MAX_NAME or not all(
            len(label) <= MAX_LABEL and _LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a host name: labels must be 1-63 letters, digits, - or _")
    if labels[-1].isdigit():  # 999.1.1.1, 127.1: neither an address nor a name (RFC 3696)
        raise ValueError("not an IP address, and a name cannot end in a numeric label")
    return host, False


def normal(host: str) -> str:
    """A literal IP address in its one form: compressed, lower case, and an IPv4-mapped
    IPv6 address (``::ffff:a.b.c.d``, as a dual-stack socket reports IPv4 peers) as the
    IPv4 address it stands for, so one host never counts as two. ValueError if ``host`` is
    not an IP address."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def literal(host: object) -> str:
    """A literal IP address from a peer, normalised; NameRefused for a host name,
    ValueError for anything else."""
    if not isinstance(host, str):
        raise ValueError("not an address")
    text, is_literal = parse_host(host)
    if not is_literal:
        raise NameRefused("peers give literal IP addresses, not host names")
    return text


def is_public(host: str) -> bool:
    """Not in a private, loopback or link-local range (the lab's 100.64/10 counts as
    public: it stands for the internet there)."""
    return not ipaddress.ip_address(host).is_private
