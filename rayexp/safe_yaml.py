"""Reading a hostile or broken YAML file safely, in one line per problem: the guard in front of
every sweep file (:mod:`rayexp.config`, the TMS study's reader).

A file is read only if it is UTF-8 and at most :data:`MAX_FILE_BYTES`; it may nest at most
:data:`MAX_DEPTH` deep, expand (anchors and aliases counted each time they are used) to at most
:data:`MAX_NODES` values, and repeat no key. ``1e-3`` is the number YAML 1.2 says it is. Every
refusal is a :class:`YamlRefused` naming where (``line N``) and what, checked before a value is built.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# The shipped sweeps are a few kB; these caps stop a runaway or hostile file before it costs
# memory, a RecursionError (deep nesting) or an exponential expansion (a "billion laughs" of aliases).
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlRefused(ValueError):
    """``where`` is ``line N``, ``yaml`` (a parser error with no position) or empty (the whole file)."""

    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}" if where else message)


class _Loader(_SafeLoader):  # type: ignore[misc,valid-type]
    """Safe loading that refuses a repeated key (YAML keeps the last one silently) and reads
    ``1e-3`` as the number YAML 1.2 says it is, not as a string."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden, by design
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise YamlRefused(
                        f"line {line}", f"duplicate key {key!r} at line {line} (first at line {seen[key]})"
                    )
                seen[key] = line
            except TypeError:  # an unhashable key: the constructor below says so
                break
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _check_shape(text: str) -> None:
    """Depth and expanded size from the parser's events, which need no recursion and share nothing:
    an alias counts its anchor's whole subtree each time it is used, so a "billion laughs" is
    refused after reading it once, not after expanding it."""
    sizes: dict[str, int] = {}
    open_: list[list[Any]] = []  # [anchor, values so far] of each open collection
    total = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_) >= MAX_DEPTH:
                raise YamlRefused(f"line {line}", f"nested more than {MAX_DEPTH} levels deep")
            open_.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, n = open_.pop()
        elif isinstance(event, yaml.AliasEvent):
            anchor, n = None, sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            anchor, n = event.anchor, 1
        else:
            continue
        if anchor:
            sizes[anchor] = n
        if open_:
            open_[-1][1] += n
        else:
            total += n
        if (open_[-1][1] if open_ else total) > MAX_NODES:
            raise YamlRefused(
                f"line {line}",
                f"the document expands to more than {MAX_NODES:_} values, each alias counted as the whole "
                "anchor it repeats; write the values out instead",
            )


def loads(text: str) -> Any:
    """The YAML document in ``text``, or YamlRefused."""
    try:
        _check_shape(text)
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise YamlRefused(where, f"not valid YAML: {getattr(err, 'problem', err)}") from None


def read_text(path: str | Path) -> str:
    """The file's text, read no further than the size cap; YamlRefused for an unreadable, huge or
    non-UTF-8 file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # never more: the file may be huge, or endless
    except OSError as err:
        raise YamlRefused("", f"cannot read: {err.strerror or err}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise YamlRefused("", f"larger than {MAX_FILE_BYTES:_} bytes; a sweep file is a few kB of YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"byte {err.start} ({raw[err.start : err.start + 1]!r})"
        raise YamlRefused("", f"not UTF-8 text at {where}; save the file as UTF-8") from None
