"""YAML that came from outside (a flashed registration file, a profile an operator
applies), read without the two ways a small document can exhaust the reader.

PyYAML's safe loader still resolves aliases: a "billion laughs" document of a few
hundred bytes is a graph whose walk (validation, JSON encoding, a dump) visits 10^9
nodes. And it composes nesting by recursion, so a few thousand ``[`` end in a
``RecursionError`` instead of a YAML error. Edgefleet's files need neither aliases
nor more than a few levels, so both are refused, with the line, before anything is
built: the event stream is checked first (the parser itself is iterative), and only
a document that passes is composed. A value the loader cannot build (a timestamp
with month 13, an integer past Python's digit limit) is a YAML error too, not a
crash.

The agent imports this module: it loads PyYAML only when a file is read.
"""

from __future__ import annotations

from typing import Any

from edgefleet.errors import ConfigError

MAX_DEPTH = 32
"""Nested mappings and lists; a profile is six deep at most."""
MAX_CHARS = 1024 * 1024


def load(text: str, what: str, *, max_depth: int = MAX_DEPTH, max_chars: int = MAX_CHARS) -> Any:
    """The one document in ``text``; ``what`` names it in every refusal (a ConfigError)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    if len(text) > max_chars:
        raise ConfigError(f"{what} is {len(text)} characters; at most {max_chars} are read")
    try:
        depth = 0
        for event in yaml.parse(text, Loader=loader):
            line = event.start_mark.line + 1 if event.start_mark else "?"
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(
                    f"{what}: line {line}: YAML aliases (*{event.anchor}) are refused: "
                    "write the value out where it is used"
                )
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise ConfigError(
                        f"{what}: line {line}: nested more than {max_depth} levels deep"
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=loader)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}") from exc
