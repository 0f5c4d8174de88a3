"""Settings from a TOML file (``--config`` / ``MQCAST_CONFIG``), under the flags and the environment.

The file names settings as the flags do, without the dashes in front (``max-batch = 2048``); the
environment variable's name without its prefix works too (``MAX_BATCH = 2048``). Precedence, highest
first: the flag, the environment, the file, the built-in default. Tables group settings for the
reader only (``[kafka]``, ``[model]``); their names are ignored. An unknown setting or a value the
flag would refuse stops the start with a message naming the file and the setting, so a typo never
passes silently as a default.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from stream.config import ENV_PREFIX, EnvDefault


class ConfigFileError(ValueError):
    """The configuration file is unreadable or holds a setting the command does not accept."""


def _flatten(table: dict[str, Any], path: str, where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, path, f"{where}{key}."))
        else:
            out[key] = (value, f"{where}{key}")
    return out


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def read_config_file(path: Path) -> dict[str, tuple[Any, str]]:
    """The settings of a TOML file: ``{key: (value, dotted name in the file)}``."""
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigFileError(f"{path}: no such configuration file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML ({exc})") from exc
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read ({exc.strerror})") from exc
    return _flatten(data, str(path))


def apply_config_file(parser: argparse.ArgumentParser, path: Path) -> list[str]:
    """Make the file's settings the defaults of ``parser``'s environment-backed flags.

    A setting whose environment variable is set keeps the environment's value. Each value is checked
    by the flag's own type and choices now, so the error names the file. Returns the flags set.
    """
    settings = read_config_file(path)
    by_name: dict[str, EnvDefault] = {}
    for action in parser._actions:
        if isinstance(action, EnvDefault):
            flag = next(o for o in action.option_strings if o.startswith("--"))[2:]
            by_name[flag] = action
            by_name[action.env.removeprefix(ENV_PREFIX)] = action
    applied = []
    for key, (value, shown) in settings.items():
        action = by_name.get(key) or by_name.get(key.replace("_", "-"))
        if action is None or action.dest == "config":
            known = sorted(k for k in by_name if not k.isupper() and k != "config")
            raise ConfigFileError(f"{path}: unknown setting {shown!r}; settings are: {', '.join(known)}")
        if action.env in os.environ:
            continue
        text = _as_text(value)
        try:
            converted = action.type(text) if action.type is not None else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigFileError(f"{path}: {shown} = {value!r}: {exc}") from exc
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise ConfigFileError(f"{path}: {shown} = {value!r} is not one of {choices}")
        action.default = text
        action.required = False
        applied.append(action.dest)
    return applied
