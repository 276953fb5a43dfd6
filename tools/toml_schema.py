"""The one validator of the TOML files the project reads (``boards/*.toml``,
``boards/meters/*.toml``, ``gateway.toml``), and its one error format::

    <file>: <key.path> = <value>: <what is allowed>
    <file>: <key.path>: missing (required)
    <file>: <key.path>: unknown key; allowed keys: <keys>
    <file>: not valid TOML: <the parser's message>

Values are shown as TOML writes them (``"f64"``, ``70000``, ``true``, ``[10, 0]``, a
register address as ``0x004A``). A :class:`Table` knows its file and key path; each
check raises the caller's error class (``tools.errors.ConfigError`` for the tools,
``gateway.errors.ConfigError`` for the gateway), so each package keeps its own tree.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import NoReturn

from tools.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
_ABSENT = object()


def display_path(path) -> str:
    """A file inside the repository relative to it, anything else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def show(value, hex_digits: int = 0) -> str:
    """``value`` as TOML writes it; integers in hex with ``hex_digits`` digits if > 0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and hex_digits:
        return f"0x{value:0{hex_digits}X}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def one_of(allowed) -> str:
    return ", ".join(str(a) for a in allowed)


def parse_text(text: str, where: str, error=ConfigError) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML: {exc}") from None


def read(path, error=ConfigError, missing_hint: str = "") -> tuple[dict, str]:
    """Parse a TOML file -> (document, the file's name for messages)."""
    path = Path(path)
    where = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: no such file{missing_hint}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not valid UTF-8: {exc}") from None
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc}") from None
    return parse_text(text, where, error), where


class Table:
    """One TOML table being validated; unknown keys are refused at once."""

    def __init__(self, data, where: str, prefix: str, allowed, error=ConfigError,
                 value=_ABSENT):
        self.data = data
        self.where = where
        self.prefix = prefix
        self.error = error
        if not isinstance(data, dict):
            shown = show(data if value is _ABSENT else value)
            raise error(f"{where}: {prefix or '(top level)'} = {shown}: must be a table")
        for key in data:
            if key not in allowed:
                raise error(f"{where}: {self.path(key)}: unknown key; allowed keys: "
                            f"{one_of(sorted(allowed))}")

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, allowed: str, value=_ABSENT, hex_digits: int = 0) -> NoReturn:
        """Refuse ``key`` (its value, or ``value`` when given) saying what is allowed."""
        if value is _ABSENT:
            value = self.data.get(key, _ABSENT)
        if value is _ABSENT:
            raise self.error(f"{self.where}: {self.path(key)}: {allowed}")
        raise self.error(f"{self.where}: {self.path(key)} = {show(value, hex_digits)}: "
                         f"{allowed}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str):
        if key not in self.data:
            self.fail(key, "missing (required)")
        return self.data[key]

    def integer(self, key: str, lo: int, hi: int, hex_digits: int = 0) -> int:
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            span = (f"0x{lo:0{hex_digits}X}..0x{hi:0{hex_digits}X}" if hex_digits
                    else f"{lo}..{hi}")
            digits = hex_digits if isinstance(value, int) and not isinstance(value, bool) else 0
            self.fail(key, f"must be an integer {span}", hex_digits=digits)
        return value

    def choice(self, key: str, allowed: tuple):
        value = self.raw(key)
        same_kind = isinstance(value, type(allowed[0])) and not isinstance(value, bool)
        if not same_kind or value not in allowed:
            self.fail(key, f"must be one of {one_of(allowed)}")
        return value

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return value

    def text(self, key: str, max_len: int, default: str | None = None) -> str:
        if default is not None and key not in self.data:
            return default
        value = self.raw(key)
        if not isinstance(value, str) or len(value) > max_len:
            self.fail(key, f"must be text of at most {max_len} characters")
        return value

    def table(self, key: str, allowed) -> Table:
        return Table(self.raw(key), self.where, self.path(key), allowed, self.error)
