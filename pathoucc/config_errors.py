"""A config's validation error told in one line: the file, the key and what is wrong (an unknown key names the
valid keys of its section; quoted values cut to 200 characters)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from pathoucc.errors import quote

__all__ = ["format_error", "problem_text"]


def problem_text(err: Any) -> str:
    """A pydantic error as ``what is wrong (got <value, cut to 200 characters>)``; a choice names its values."""
    msg, value = err["msg"].removeprefix("Value error, "), err.get("input")
    return msg if err["type"] == "extra_forbidden" or isinstance(value, dict) else f"{msg} (got {quote(value)})"


def _section_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at ``loc`` (the section the bad key sits in)."""
    for part in loc[:-1]:
        ann = getattr(model.model_fields.get(str(part)), "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    return list(model.model_fields)


def format_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """The first problem of ``exc`` (validating ``model``) as one line naming ``source`` and the key; an unknown key
    names the valid keys of its section."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = ", ".join(_section_fields(model, loc))
        return f"{source}: unknown key {quote(where)} (valid keys here: {valid})"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{source}: {where}: {problem_text(err)}{more}"
