"""Cluster profile documents: the schema, validation with JSON-pointer paths, canonical YAML.

One schema for the controller and the CLI. ``profiles/schema.json`` in the repository is
the one people read and edit; ``edgefleet/profile_schema.json`` is the same file shipped
as package data so an installed CLI or controller can load it (tests/test_profiles.py
fails when the two differ: edit one, copy it over the other).

Only fields something acts on are allowed; any other is refused, never silently kept.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
import yaml


@functools.cache
def schema() -> dict[str, Any]:
    text = resources.files("edgefleet").joinpath("profile_schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def pointer(path: Any) -> str:
    """A JSON pointer (RFC 6901) for a path of keys and indexes; ``""`` is the whole document."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


MAX_DEPTH = 32
"""Nested objects and lists in a profile (a YAML file's limit too, edgefleet/safeyaml.py):
deeper, and rendering it (canonical YAML, the fleet repository) would exhaust Python's
recursion, so it is refused when applied."""


def errors(doc: Any) -> list[tuple[str, str]]:
    """Every problem with a profile document, as (JSON pointer, reason), sorted by path."""
    deep = _too_deep(doc)
    if deep is not None:
        return [(deep, f"nested more than {MAX_DEPTH} levels deep")]
    out: list[tuple[str, str]] = []
    for err in _validator().iter_errors(doc):
        out.extend(_explain(err))
    out.extend(_duplicates(doc))
    out.extend(_k3s_only(doc))
    out.extend(_signing_keys(doc))
    out.extend(_drift_thresholds(doc))
    out.extend(_parents(doc))
    return sorted(set(out))


def _too_deep(doc: Any) -> str | None:
    """The pointer of the first value nested past ``MAX_DEPTH``, else None (no recursion)."""
    stack: list[tuple[Any, list[Any]]] = [(doc, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict | list):
            if len(path) >= MAX_DEPTH:
                return pointer(path)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, [*path, k]) for k, v in items)
    return None


def _explain(err: jsonschema.ValidationError) -> list[tuple[str, str]]:
    path = list(err.absolute_path)
    where = pointer(path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        return [
            (
                pointer([*path, key]),
                "unknown field: nothing acts on it yet, so it is refused rather than kept",
            )
            for key in err.instance
            if key not in allowed
        ]
    if err.validator == "pattern" and path and path[-1] in ("reference", "parent"):
        reason = (
            f"{err.instance!r} is not a model reference: write registry/repo:tag (pinned to "
            "its digest when the profile is applied) or registry/repo@sha256:<64 hex>"
        )
        return [(where, reason)]
    if err.validator == "pattern" and path[-2:] == ["k3s", "version"]:
        reason = (
            f"{err.instance!r} is not a K3s release: write it as K3s tags it, e.g. v1.30.4+k3s1"
        )
        return [(where, reason)]
    if err.validator == "pattern" and path[-2:] == ["os", "version"]:
        return [(where, f"{err.instance!r} is not an image tag (letters, digits, . _ -)")]
    if err.validator == "pattern" and path[-2:] == ["os", "image"]:
        reason = f"{err.instance!r} is not an image name: write registry/repository, no tag"
        return [(where, reason)]
    if err.validator == "oneOf" and path == ["k3s"]:
        return [(where, "give exactly one of 'version' (pinned) or 'channel' (a release URL)")]
    if err.validator == "oneOf" and len(path) >= 2 and path[-2] == "applications":
        return [(where, "an application needs exactly one of 'kustomize' or 'helm'")]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [k for k in err.validator_value if k not in err.instance]
        return [(pointer([*path, k]), "required field is missing") for k in missing]
    return [(where, err.message)]


def _duplicates(doc: Any) -> list[tuple[str, str]]:
    out = []
    if not isinstance(doc, dict):
        return out
    for section in ("models", "applications"):
        items = doc.get(section)
        if not isinstance(items, list):
            continue
        seen: set[str] = set()
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str):
                if name in seen:
                    out.append((pointer([section, i, "name"]), f"duplicate name {name!r}"))
                seen.add(name)
    return out


def _parents(doc: Any) -> list[tuple[str, str]]:
    """A model's ``parent`` is another model: comparing one with itself measures nothing."""
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        return []
    return [
        (
            pointer(["models", i, "parent"]),
            "the parent is the model itself: name the full-"
            "precision model this one was quantized from, or remove parent",
        )
        for i, m in enumerate(models)
        if isinstance(m, dict)
        and m.get("parent") is not None
        and m.get("parent") == m.get("reference")
    ]


K3S_ONLY = ("os", "k3s")
"""Fields rendered as system-upgrade-controller Plans, which only a K3s device runs."""


def _k3s_only(doc: Any) -> list[tuple[str, str]]:
    if not isinstance(doc, dict) or doc.get("mode") != "direct":
        return []
    return [
        (
            pointer([key]),
            "only a mode: k3s profile can set it (it becomes a system-upgrade-controller "
            "Plan); a direct device has no K3s to run one: remove it or use mode: k3s",
        )
        for key in K3S_ONLY
        if key in doc
    ]


def _signing_keys(doc: Any) -> list[tuple[str, str]]:
    """Every ``model_signatures`` key must load (a device could verify nothing with it),
    and key ids must be unique (a refusal names the key by its id)."""
    from edgefleet.errors import ConfigError
    from edgefleet.models.signing import load_public

    section = doc.get("model_signatures") if isinstance(doc, dict) else None
    keys = section.get("keys") if isinstance(section, dict) else None
    if not isinstance(keys, list):
        return []
    out = []
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            continue
        kid, pem = key.get("id"), key.get("public_key")
        if isinstance(kid, str):
            if kid in seen:
                out.append(
                    (pointer(["model_signatures", "keys", i, "id"]), f"duplicate key id {kid!r}")
                )
            seen.add(kid)
        if isinstance(pem, str):
            try:
                load_public(pem, f"key {kid!r}")
            except ConfigError as exc:
                out.append((pointer(["model_signatures", "keys", i, "public_key"]), exc.message))
    return out


def _drift_thresholds(doc: Any) -> list[tuple[str, str]]:
    """``drift.thresholds.investigate`` must be below ``act`` (either may take its default:
    0.1 and 0.25), or no window would ever read "investigate"."""
    section = doc.get("drift") if isinstance(doc, dict) else None
    given = section.get("thresholds") if isinstance(section, dict) else None
    if not isinstance(given, dict):
        return []
    investigate, act = given.get("investigate", 0.1), given.get("act", 0.25)
    numbers = all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in (investigate, act)
    )
    if numbers and investigate >= act:
        return [
            (
                pointer(["drift", "thresholds"]),
                f"investigate ({investigate}) must be below act ({act}): PSI between the two "
                "asks for a look, above act for action",
            )
        ]
    return []


def describe(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{where or '/'}: {reason}" for where, reason in problems)


def canonical_yaml(doc: dict[str, Any]) -> str:
    """The one text of a document: keys sorted, block style (what ``diff`` compares)."""
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, allow_unicode=True)
