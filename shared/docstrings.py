"""The docstrings written under class attributes, read back from the source.

A model's fields are documented the way Sphinx reads them: a string literal right under the
field. Python keeps no such string at run time, so this reads it from the class's source,
once per class; the generated contract (``docs/protocol.md``) and the commented sample
config (``tom init``) are made from them. No service calls this while it runs.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import textwrap


@functools.cache
def _own(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined without a source file (tests, the REPL)
        return {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body.body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def attribute_docs(cls: type) -> dict[str, str]:
    """Attribute name -> its docstring (whitespace collapsed), the class's own over its
    bases'."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object:
            docs.update(_own(klass))
    return docs
