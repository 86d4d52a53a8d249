"""The run config of the main job's command line: a config file (with an optional variant) and field overrides.

    --config configs/vit_effnet.py[:VARIANT]      load the file, call its get_config([VARIANT])
    --config.train.steps=20                       set a field (also `--config.train.steps 20`)
    --config.model.patch=(4,8,8)                  a tuple (also `4,8,8`; repeating the flag appends)
    --config.model.share_encoders=false           a bool (true/t/1, false/f/0; the bare flag is true,
                                                  `--noconfig.model.share_encoders` false)
    --config.mesh.num_devices=4                   a field that is None by default takes its declared type
                                                  (and `None` sets it back)

Each value is read as the type of the field it replaces, so a typo is refused, not turned into a string; the
config is locked, so an unknown field is refused too, with the closest existing name. Every refusal is a
ValueError (OverrideError) or an OSError whose message names the flag, field or path; `lumbar_jax.cli.run`
reports it in one line. Setting a field that shares its value with another (`fold` and `cv.fold`) sets both.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.machinery
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

_OVERRIDE = re.compile(r"--(no)?config\.([^=]*)(?:=(.*))?", re.DOTALL)
_NUMBER = re.compile(r"-\.?\d")  # a negative number is the value of the flag before it, not a flag
_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")


class OverrideError(ValueError):
    """A `--config...` flag that cannot be applied; the message names the flag or field."""


@dataclasses.dataclass(frozen=True)
class Override:
    """One `--config.PATH[=VALUE]` flag: `value` None when given bare (`--config.model.share_encoders`)."""

    path: str  # 'train.steps'
    value: str | None
    negated: bool = False  # `--noconfig.PATH`

    @property
    def flag(self) -> str:
        name = f"--{'no' if self.negated else ''}config.{self.path}"
        return name if self.value is None else f"{name}={self.value}"


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[Override]]:
    """(the other arguments, the `--config.PATH[=VALUE]` / `--config.PATH VALUE` flags in order). The word after a
    flag without `=` is its value unless it looks like a flag itself (a negative number is a value)."""
    rest: list[str] = []
    overrides: list[Override] = []
    args = list(argv)
    i = 0
    while i < len(args):
        match = _OVERRIDE.fullmatch(args[i])
        i += 1
        if match is None:
            rest.append(args[i - 1])
            continue
        negated, path, value = bool(match.group(1)), match.group(2), match.group(3)
        if not negated and value is None and i < len(args) and (
                not args[i].startswith("-") or _NUMBER.match(args[i])):
            value, i = args[i], i + 1
        overrides.append(Override(path, value, negated))
    return rest, overrides


def _config_code_error(spec: str, path: str, err: Exception) -> OverrideError:
    """One line for an exception raised by a config file's code: the file's deepest line in the traceback."""
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__)
             if os.path.abspath(f.filename) == os.path.abspath(path)]
    where = f"{path} line {lines[-1]}" if lines else path
    return OverrideError(f"--config {spec}: {where}: {type(err).__name__}: {err}")


def load_config(spec: str):
    """`path[:variant]` -> the locked ConfigDict that the file's `get_config([variant])` returns."""
    path, has_variant, variant = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config {spec}: no such file {path}")
    if not os.path.isfile(path):
        raise OverrideError(f"--config {spec}: {path} is not a file")
    name = "_lumbar_jax_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    loader = importlib.machinery.SourceFileLoader(name, path)  # any file name, like ml_collections
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module  # dataclasses and pickling look a module's classes up here
    try:
        loader.exec_module(module)
    except SyntaxError as err:
        raise OverrideError(f"--config {spec}: {path} line {err.lineno}: {err.msg}") from None
    except Exception as err:  # the config file's own code failed: name its line, not a traceback
        raise _config_code_error(spec, path, err) from None
    if not callable(getattr(module, "get_config", None)):
        raise OverrideError(f"--config {spec}: {path} defines no get_config()")
    try:
        config = module.get_config(variant) if has_variant else module.get_config()
    except ValueError as err:  # an unknown variant: the config file's message names it
        raise OverrideError(f"--config {spec}: {err}") from None
    except Exception as err:
        raise _config_code_error(spec, path, err) from None
    from ml_collections import ConfigDict

    if not isinstance(config, ConfigDict):
        raise OverrideError(f"--config {spec}: get_config() returned {type(config).__name__}, not a ConfigDict")
    config.lock()  # no new fields: a misspelt override is refused, not added
    return config


def apply_overrides(config, overrides: Sequence[Override]) -> None:
    """Set each override's field, read as the field's type (module docstring). Repeating a tuple field's flag
    appends to the tuple it started; repeating another field's flag keeps the last value."""
    tuples: dict[str, tuple] = {}
    for override in overrides:
        holder, name, field_type = _field(config, override.path)
        value = _parse(override, field_type, optional=holder[name] is None)
        if field_type is tuple:
            value = tuples[override.path] = tuples.get(override.path, ()) + value
        try:
            holder[name] = value  # through a shared FieldReference: every alias of the field gets it
        except (TypeError, ValueError) as err:
            raise OverrideError(f"{override.flag}: {err}") from None


def _field(config, path: str):
    """(the ConfigDict holding the field, its name, its type) of `path` ('train.steps'), or an OverrideError
    naming the first part that does not exist, with the closest name there."""
    from ml_collections import ConfigDict

    parts = path.split(".")
    node, where = config, "config"
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict):
            raise OverrideError(f"{where} is {_a(type(node))} value, not a group of fields: "
                                f"no field {'.'.join(parts[i:])!r} in it")
        if part not in node:
            close = difflib.get_close_matches(part, list(node.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; its fields: {', '.join(node.keys())}"
            raise OverrideError(f"{where} has no field {part!r}{hint}")
        if i == len(parts) - 1:
            break
        node, where = node[part], f"{where}.{part}"
    field_type = node.get_type(part)  # a FieldReference's declared type, else the value's
    if isinstance(node[part], ConfigDict):
        raise OverrideError(f"config.{path} is a group of fields ({', '.join(node[part].keys())}): set them "
                            f"one by one, e.g. --config.{path}.{next(iter(node[part].keys()), 'FIELD')}=...")
    return node, part, field_type


def _parse(override: Override, field_type: type, optional: bool) -> Any:
    """The override's text read as `field_type`; `optional` (the field is None now): 'None' sets None."""
    field = f"config.{override.path}"
    text = override.value
    if override.negated or text is None:
        if field_type is bool or field_type is type(None):
            return not override.negated
        raise OverrideError(f"{override.flag}: {field} is {_a(field_type)} field: give a value "
                            f"(--config.{override.path}=VALUE)")
    if optional and text in ("None", "none"):
        return None
    try:
        if field_type is bool:
            return _bool(text)
        if field_type is int:
            return int(text, 0) if re.match(r"[-+]?0[xob]", text, re.IGNORECASE) else int(text)
        if field_type is float:
            return float(text)
        if field_type is str:
            return text
        if field_type is tuple:
            return _tuple(text)
        if field_type is type(None):  # a plain None field: any Python literal, else a string
            return _literal(text)
    except (ValueError, SyntaxError):
        raise OverrideError(f"{field}: cannot read {text!r} as {field_type.__name__}") from None
    raise OverrideError(f"{field}: {_a(field_type)} field cannot be set from the command line")


def _a(field_type: type) -> str:
    name = field_type.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(text)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.capitalize() if text in ("true", "false") else text)
    except (ValueError, SyntaxError):
        return text


def _tuple(text: str) -> tuple:
    """'(4,8,8)', '4,8,8', '[4, 8, 8]' -> (4, 8, 8); '8' -> (8,); a bare word -> ('word',)."""
    try:
        value = ast.literal_eval(text)
    except ValueError:  # a name: one string element
        value = text
    except SyntaxError:
        if "," in text or " " in text:
            raise
        value = text  # a single string with an operator in it: a path, a pattern
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,)
