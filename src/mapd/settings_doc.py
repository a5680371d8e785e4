"""Every config setting with its type, default and help, read from the config's own models:
what `mapd settings` prints and what docs/config.md holds (a test keeps the two equal).

    for s in all_settings():
        print(s.path, s.kind, s.default, s.help)   # "train.lr", "float", "0.0002", "..."
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mapd.config import RunConfig, section_type


@dataclass(frozen=True)
class Setting:
    path: str  # "teachers.N.limits.rpm"
    kind: str  # "int", "openai | transformers", "list[str]"
    default: str  # "required", "-" (none), or the default as YAML would write it
    help: str


def all_settings(
    model: type[BaseModel] = RunConfig, prefix: str = "", defaults: BaseModel | None = None
) -> list[Setting]:
    """The settings of `model`, sections expanded in place (a list of sections as `N`);
    `defaults`: the section's own default (the student's sampling is not `Sampling()`)."""
    found = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        section = section_type(field.annotation)
        if section is not None:
            many = get_origin(field.annotation) is list
            kind = "list of sections" if many else "section"
            optional = "-" if not field.is_required() and field.default is None else ""
            found.append(Setting(path, kind, optional, help_of(field)))
            own = None if many or optional else section_default(field, defaults, name)
            found += all_settings(section, f"{path}.N." if many else f"{path}.", own)
            continue
        default = default_of(field, getattr(defaults, name, PydanticUndefined))
        found.append(Setting(path, kind_of(field.annotation), default, help_of(field)))
    return found


def section_default(field: Any, outer: BaseModel | None, name: str) -> BaseModel | None:
    """The instance a section gets when it is left out: the outer default's, else its own."""
    if outer is not None:
        return getattr(outer, name)
    if field.default_factory is not None:
        return field.default_factory()
    return field.default if isinstance(field.default, BaseModel) else None


def kind_of(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in args)
    if getattr(annotation, "__metadata__", None):  # Annotated[X, validator]
        return kind_of(args[0])
    if origin in (Union,) or type(annotation).__name__ == "UnionType":
        return " | ".join(kind_of(a) for a in args if a is not type(None))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(kind_of(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def default_of(field: Any, value: Any = PydanticUndefined) -> str:
    """`value` (the enclosing default's) or the field's own default, as YAML would say it."""
    if value is PydanticUndefined:
        if field.is_required():
            return "required"
        value = field.default_factory() if field.default_factory else field.default
    if value is None or value is PydanticUndefined:
        return "-"
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return json.dumps(value) if not isinstance(value, str) or not value else value


def help_of(field: Any) -> str:
    return " ".join((field.description or "").split())


def settings_markdown() -> str:
    """docs/config.md: one table of every setting."""
    lines = [
        "# Config settings",
        "",
        "Every setting of a run config, generated from `src/mapd/config/schema.py` by",
        "`mapd settings --markdown` (a test keeps this page current). `N` is a list index:",
        "`teachers.0.model` on the command line. Defaults are what an unset key gets.",
        "",
        "| setting | type | default | what it does |",
        "|---|---|---|---|",
    ]
    for s in all_settings():
        help_text = s.help.replace("<", "&lt;")
        if s.kind in ("section", "list of sections"):
            cells = (f"**{s.path}**", s.kind, f"`{s.default}`" if s.default else "", help_text)
        else:
            cells = (f"`{s.path}`", s.kind, f"`{s.default}`", help_text)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
