"""Reading a run configuration: YAML files and presets, key=value overrides, and errors that
name each problem's dotted path and the closest valid key.

    cfg = load_config("configs/demo.yaml", ["train.lr=2e-5", "teachers.0.model=gpt-4o-mini"])
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from mapd.config.schema import RunConfig
from mapd.errors import MapdError


class ConfigLoader(yaml.SafeLoader):
    """YAML as a config wants it: a key given twice in one section is an error, not a silent
    replacement of the first. Checked as each section is read, before `<<` merges apply."""

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in lines:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"`{key_node.value}` is given twice in one section (lines "
                    f"{lines[key_node.value]} and {line}); keep one",
                    key_node.start_mark,
                )
            lines[key_node.value] = line
        return node


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader)


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MapdError(f"override {item!r} is not KEY=VALUE", "e.g. train.lr=2e-5")
        try:
            value = load_yaml(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.split("."), value))
    return parsed


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(path[:i]) or "(top)"
                raise MapdError(
                    f"override {'.'.join(path)}: {where} has {len(node)} items, no index {part}",
                    "use an index from 0",
                )
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise MapdError(
                        f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section",
                        "check the key path",
                    )


def _section_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The config section (a model class) that `loc` points into, or None."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            return None
        current = section_type(field.annotation) or field.annotation
    return current if hasattr(current, "model_fields") else None


def section_type(annotation: Any) -> Any:
    """The model class of a field that is a section (also inside `X | None`, `list[X]`)."""
    if hasattr(annotation, "model_fields"):
        return annotation
    return next(
        (a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")), None
    )


# Other tools' names for a setting (transformers, TRL, LLaMA-Factory).
KEY_ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "lora_rank": "r"}


def _suggest_key(section: Any, key: str) -> str:
    """The closest valid key, looking one section deeper too: `temprature` in a teacher is
    `sampling.temperature`, not the top-level `system_prompt` that merely looks alike."""
    candidates = {name: name for name in section.model_fields}
    for name, field in section.model_fields.items():
        inner = section_type(field.annotation)
        for leaf in getattr(inner, "model_fields", {}) if inner is not None else {}:
            candidates.setdefault(leaf, f"{name}.{leaf}")
    guess = difflib.get_close_matches(KEY_ALIASES.get(key, key), list(candidates), n=1, cutoff=0.6)
    if guess:
        return f"did you mean `{candidates[guess[0]]}`?"
    return f"valid keys: {', '.join(section.model_fields)}"


# What a section given as a plain value was most likely meant to say.
SECTION_HINTS = {
    "review": " (to train on every rationale without review: dataset.mode: committee_no_review)",
    "budget": " (e.g. budget: {usd: 20} or budget: {tokens: 5000000})",
}


def format_errors(err: ValidationError) -> list[str]:
    """One line per wrong setting, in the config's words, not pydantic's."""
    found: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in err.errors():
        loc = _setting_path(e["loc"])
        path = ".".join(str(p) for p in loc) or "config"
        kind = e["type"]
        if kind == "extra_forbidden":
            section = _section_at(RunConfig, loc)
            hint = _suggest_key(section, str(loc[-1])) if section is not None else "not a setting"
            msg = f"unknown key; {hint}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "expected a section of KEY: VALUE settings" + SECTION_HINTS.get(path, "")
        elif kind == "list_type" and path == "teachers":
            msg = "expected a list: start each teacher with `- ` (e.g. `  - name: gpt-4o-mini`)"
        elif loc[-1:] == ("backend",) and str(e["input"]).lower() in BACKEND_OF:
            msg = BACKEND_OF[str(e["input"]).lower()]
        else:
            msg = e["msg"].removeprefix("Value error, ").replace(" after validation", "")
            # a whole section as the value says nothing the message does not: it names the field
            if not isinstance(e["input"], dict | list | BaseModel):
                got[path] = f" (got {e['input']!r})"
        if msg not in found.setdefault(path, []):
            found[path].append(msg)
    return [f"{path}: {'; or '.join(msgs)}{got.get(path, '')}" for path, msgs in found.items()]


_SERVERS = ("ollama", "sglang", "llama.cpp", "llamacpp", "lmstudio", "tgi", "openrouter")
# backend names users reach for, and the one that serves them
BACKEND_OF = {
    **{
        name: f"a {name} server is `backend: openai` (any OpenAI-compatible API) with its base_url"
        for name in (*_SERVERS, "together", "groq", "azure", "gemini", "anthropic", "deepseek")
    },
    **{
        name: "a model run in this process is `backend: transformers`"
        for name in ("hf", "huggingface", "local", "torch", "pytorch", "peft")
    },
}


def _setting_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """`loc` as the setting's path: pydantic's validator names dropped, and a value of a
    union type (`batch: maybe` tried as `bool` and as `literal[...]`) reported at the
    setting itself, not once per member tried."""
    path: list[Any] = []
    current: Any = RunConfig
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        path.append(part)
        current = _inside(current, part)
        if _is_union(current):
            break
    return tuple(path)


def _inside(annotation: Any, part: Any) -> Any:
    """The annotation of `part` inside `annotation` (a model's field, a list's item, a
    dict's value), or None when unknown."""
    annotation = _without_none(annotation)
    if hasattr(annotation, "model_fields"):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    args = get_args(annotation)
    if get_origin(annotation) in (list, tuple) and isinstance(part, int) and args:
        return args[0]
    if get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    return None


def _without_none(annotation: Any) -> Any:
    """`X | None` as X (pydantic reports no member for it)."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(_without_none(annotation)) in (Union, UnionType)


# What PyYAML's words for the usual slips mean.
YAML_HINTS = {
    "mapping values are not allowed here": "indent the line to its section's keys, put a "
    "section's keys on their own lines (`task: name: gsm8k` is two levels on one line), or "
    "quote a value that holds `: `",
    "expected <block end>, but found '<block mapping start>'": "indent the keys of one section "
    "alike (two spaces deeper than the section's name; in a list, under the first key after `- `)",
    "found character '\\t' that cannot start any token": "indent with spaces, not tabs",
}


def preset_or_path(path: Path) -> Path:
    """`path`, or the preset it names: a relative name with no suffix that is no file here,
    such as `paper/svamp` (said on stderr, so a preset is never taken for a file silently)."""
    if path.exists() or path.is_absolute() or path.suffix or not path.name:
        return path
    if path.with_suffix(".yaml").exists():
        return path.with_suffix(".yaml")
    preset = PRESETS / path.with_suffix(".yaml")
    if not preset.is_file():
        return path
    print(f"note: {path} is the preset shipped in the package ({preset})", file=sys.stderr)
    return preset


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's settings; a name such as `paper/svamp` that is no file is the preset
    of that name shipped in the package (for an installed mapd without the repository)."""
    path = preset_or_path(Path(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MapdError(
            f"config file {path} not found",
            f"check the path (presets in the package: {', '.join(preset_names())})",
        ) from None
    except UnicodeDecodeError:
        raise MapdError(f"config file {path} is not UTF-8 text", "save it as UTF-8") from None
    except IsADirectoryError:
        raise MapdError(
            f"{path} is a folder, not a config file",
            "give the YAML file, e.g. configs/demo.yaml or a run's RUN_DIR/config.yaml",
        ) from None
    except OSError as exc:
        raise MapdError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise MapdError(
            f"{path}: malformed YAML{where}: {problem}",
            YAML_HINTS.get(problem, "fix the YAML syntax"),
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MapdError(
            f"{path}: expected a mapping of settings at the top level",
            "a config is KEY: VALUE lines (name:, task:, student:, teachers: ...), "
            "e.g. configs/demo.yaml",
        )
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply key=value overrides, validate; raise MapdError listing every problem."""
    data = read_yaml(path)
    for keys, value in parse_overrides(overrides or []):
        apply_override(data, keys, value)
    if data.get("output_dir") == ".":
        # the config.yaml kept in a run folder points at the folder that holds it
        data["output_dir"] = str(Path(path).parent)
    return validate_config(data, source=str(path))


def saved_overrides(path: str | Path, overrides: list[str]) -> list[tuple[str, Any, Any]]:
    """The overrides that change a run folder's own config.yaml: (key, value before, after).

    A run saves its resolved config as RUN_DIR/config.yaml, the record of what it ran with.
    When that same file is the config given, an override is therefore kept for every later
    run of it; the caller says so. Empty when `path` is any other file.
    """
    path = Path(path)
    if not overrides or path.name != "config.yaml":
        return []
    resolved = load_config(path, overrides)
    if resolved.run_dir.resolve() != path.parent.resolve():
        return []  # the resolved config is saved in another folder (output_dir was overridden)
    try:
        before = load_config(path).model_dump(mode="json")
    except MapdError:  # the file alone is invalid and an override mends it
        before = read_yaml(path)
    after = resolved.model_dump(mode="json")
    changes = []
    for keys, _ in parse_overrides(overrides):
        old, new = _lookup(before, keys), _lookup(after, keys)
        if old != new:
            changes.append((".".join(keys), old, new))
    return changes


def _lookup(data: Any, keys: list[str]) -> Any:
    for key in keys:
        if isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        elif isinstance(data, dict):
            data = data.get(key)
        else:
            return None
    return data


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        problems = format_errors(err)
        raise MapdError(
            f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems),
            "fix these keys, then run `mapd validate` again",
        ) from None


PRESETS = Path(__file__).parents[1] / "presets"


def preset_names() -> list[str]:
    return sorted(
        p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml")
    )


def preset_path(name: str) -> Path:
    """A config shipped inside the package, e.g. `paper/svamp`."""
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        raise MapdError(f"no preset {name!r}", f"presets: {', '.join(preset_names())}")
    return path


def dump_run_config(cfg: RunConfig) -> str:
    """The resolved config as kept in the run folder: `output_dir: .` so the folder can move."""
    data = cfg.model_dump(mode="json")
    data["output_dir"] = "."
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
