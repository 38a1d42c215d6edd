"""``a.b=value`` overrides of a raw config dict (the command line's ``--set``, ``refine`` runs' changes); the
values are parsed as YAML, safely (:func:`pathoucc.files.parse_yaml`)."""

from __future__ import annotations

from typing import Any

import yaml

from pathoucc.errors import PathouccError, quote
from pathoucc.files import parse_yaml

__all__ = ["apply_overrides", "parse_override"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> ``(["train", "lr"], 0.001)``; the value is parsed as YAML (text if it is not YAML)."""
    if "=" not in text:
        raise PathouccError(f"override {quote(text)} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw, f"override {quote(text)}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise PathouccError(f"override {quote(text)} has an empty key")
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw config dict (in place) and return it."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PathouccError(f"override {quote(text)}: {quote(part)} is not a section")
        node[parts[-1]] = value
    return raw
