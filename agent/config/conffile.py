"""The one parser and writer for OpenVZ shell-style config files (`CTID.conf`, `vz.conf`, samples).

The accepted syntax is the subset of POSIX shell that OpenVZ config files use, one assignment per line:

    # whole-line comment
    NAME="double quoted, \\" \\\\ \\$ \\` escaped"   # trailing comment
    NAME='single quoted, taken literally'
    NAME=unquoted\\ value
    export NAME=value

Adjacent quoted and unquoted parts concatenate as in shell (`A="x"'y'z` is `xyz`). Anything else
(commands, `if`, multi-line quotes, line continuations, unquoted `;|&<>()` or backticks) is refused with
a `ConfigError` naming the file, the line and the key, rather than guessed at.

Obligations of `ConfFile`:
- every original line is kept, so `render()` of an unchanged file is byte-for-byte the input (line endings
  included, undecodable bytes included via ``surrogateescape``);
- `set` rewrites only the line of the key's effective (last) occurrence, keeping its indentation, its
  `export ` and its trailing comment; new keys are appended at the end;
- values are written as ``KEY="value"`` with ``"``, ``\\``, ``$`` and backtick escaped, so a written
  value reads back unchanged; newlines and NUL cannot be stored and are refused;
- `$VAR` is never expanded while parsing: `expand` does it on request (`VE_ROOT=/var/lib/vz/root/$VEID`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "KEY_RE",
    "ConfFile",
    "ConfigError",
    "ExpandError",
    "expand",
    "load",
    "quote",
]

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What a config key must look like (a shell variable name)."""

_BLANKS = " \t"
_METACHARS = ";&|<>()`"
_DQ_ESCAPABLE = '"\\$`'
_FILE_MODE = 0o644
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # arbitrary bytes survive a load/save round trip


class ConfigError(Exception):
    """A config file (or a value destined for one) is invalid.

    ``str(err)`` is one line: ``/etc/vz/conf/101.conf:7: key 'CPUUNITS': unterminated quote``; the line
    number and the key part are left out when unknown.
    """

    def __init__(self, path: str, line_no: int | None, key: str | None, reason: str) -> None:
        super().__init__(path, line_no, key, reason)
        self.path = path
        self.line_no = line_no
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        where = self.path if self.line_no is None else f"{self.path}:{self.line_no}"
        if self.key is not None:
            return f"{where}: key {self.key!r}: {self.reason}"
        return f"{where}: {self.reason}"


class ExpandError(ValueError):
    """`expand` met a variable that is not defined, or a malformed ``${...}``."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(reason)
        self.variable = variable
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass
class _Line:
    """One physical line. ``key`` is None for blank lines and comments."""

    text: str  # without the line ending
    eol: str  # "\n", "\r\n" or "" (last line without a newline)
    key: str | None = None
    value: str | None = None
    prefix: str = ""  # indentation and "export " before the key
    suffix: str = ""  # blanks and comment after the value


class _ParseError(Exception):
    def __init__(self, key: str | None, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


def quote(value: str) -> str:
    """`value` as a double-quoted shell word that `ConfFile` (and sh) read back unchanged.

    Raises ValueError for a value containing a newline or NUL: a one-assignment-per-line file cannot
    hold them.
    """
    if "\n" in value:
        raise ValueError("value must not contain a newline")
    if "\0" in value:
        raise ValueError("value must not contain a NUL character")
    escaped = "".join("\\" + c if c in _DQ_ESCAPABLE else c for c in value)
    return f'"{escaped}"'


def _parse_word(text: str, pos: int, key: str) -> tuple[str, int]:
    """Parse the shell word starting at ``text[pos]``; return (value, index after the word)."""
    out: list[str] = []
    n = len(text)
    i = pos
    while i < n:
        c = text[i]
        if c in _BLANKS:
            break
        if c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _ParseError(key, "unterminated quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= n:
                        raise _ParseError(key, "unterminated quote")
                    nxt = text[i + 1]
                    if nxt in _DQ_ESCAPABLE:
                        out.append(nxt)
                    else:  # shell keeps the backslash before any other character
                        out.append("\\" + nxt)
                    i += 2
                    continue
                out.append(c)
                i += 1
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise _ParseError(key, "unterminated quote")
            out.append(text[i + 1 : end])
            i = end + 1
        elif c == "\\":
            if i + 1 >= n:
                raise _ParseError(key, "line continuation (trailing backslash) is not supported")
            out.append(text[i + 1])
            i += 2
        elif c in _METACHARS:
            raise _ParseError(key, f"unquoted shell metacharacter {c!r} (put the value in double quotes)")
        else:
            out.append(c)
            i += 1
    return "".join(out), i


def _parse_line(text: str) -> tuple[str, str, str, str] | None:
    """(prefix, key, value, suffix) for an assignment, None for a blank or comment line."""
    body = text[:-1] if text.endswith("\r") else text
    stripped = body.lstrip(_BLANKS)
    if not stripped or stripped.startswith("#"):
        return None
    indent = body[: len(body) - len(stripped)]
    rest = stripped
    export = ""
    m = re.match(r"export[ \t]+", rest)
    if m is not None:
        export = m.group(0)
        rest = rest[m.end() :]
    eq = rest.find("=")
    if eq < 0:
        raise _ParseError(None, "expected NAME=value")
    key = rest[:eq]
    if not KEY_RE.fullmatch(key):
        if not key or any(c in _BLANKS for c in key):
            raise _ParseError(None, "expected NAME=value (no blanks around '=')")
        raise _ParseError(key, "invalid key name (must match [A-Za-z_][A-Za-z0-9_]*)")
    start = len(indent) + len(export) + eq + 1
    value, end = _parse_word(body, start, key)
    suffix = body[end:]
    after = suffix.lstrip(_BLANKS)
    if after and not after.startswith("#"):
        raise _ParseError(key, f"unexpected text after the value: {after!r} (quote values containing blanks)")
    if text.endswith("\r"):
        suffix += "\r"  # a lone CR before the newline belongs to the line, keep it on rewrite
    return indent + export, key, value, suffix


def _split_lines(text: str) -> list[tuple[str, str]]:
    """Split on "\\n" only (not on the other characters str.splitlines knows), keeping endings."""
    lines: list[tuple[str, str]] = []
    start = 0
    while start < len(text):
        nl = text.find("\n", start)
        if nl < 0:
            lines.append((text[start:], ""))
            break
        line = text[start:nl]
        if line.endswith("\r"):
            lines.append((line[:-1], "\r\n"))
        else:
            lines.append((line, "\n"))
        start = nl + 1
    return lines


class ConfFile(Mapping[str, str]):
    """A parsed config file that remembers every original line.

    As a ``Mapping[str, str]`` it shows the effective values (the last occurrence of a repeated key wins,
    as in shell), in the order of their effective lines. ``path`` is used in error messages and as the
    default target of `save`.
    """

    def __init__(self, path: str = "<config>") -> None:
        self.path = path
        self._lines: list[_Line] = []

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, path: str | os.PathLike[str] = "<config>") -> ConfFile:
        """Parse `text`; raises ConfigError naming `path`, the line and the key on a syntax error."""
        conf = cls(os.fspath(path))
        for line_no, (raw, eol) in enumerate(_split_lines(text), start=1):
            try:
                parsed = _parse_line(raw)
            except _ParseError as e:
                raise ConfigError(conf.path, line_no, e.key, e.reason) from None
            if parsed is None:
                conf._lines.append(_Line(raw, eol))
            else:
                prefix, key, value, suffix = parsed
                conf._lines.append(_Line(raw, eol, key, value, prefix, suffix))
        return conf

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConfFile:
        """Read and parse the file at `path`. OSError (e.g. FileNotFoundError) propagates unchanged."""
        with open(path, "rb") as f:
            data = f.read()
        return cls.parse(data.decode(_ENCODING, _ERRORS), path)

    # ---- reading --------------------------------------------------------------------------------

    def _effective(self) -> dict[str, int]:
        """key -> index of its last line, in the order of those lines."""
        last: dict[str, int] = {}
        for i, line in enumerate(self._lines):
            if line.key is not None:
                last.pop(line.key, None)
                last[line.key] = i
        return last

    def __getitem__(self, key: str) -> str:
        for line in reversed(self._lines):
            if line.key == key and line.value is not None:
                return line.value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._effective())

    def __len__(self) -> int:
        return len(self._effective())

    def line_of(self, key: str) -> int | None:
        """1-based line number of the key's effective (last) occurrence in `render()`, or None."""
        for i in range(len(self._lines) - 1, -1, -1):
            if self._lines[i].key == key:
                return i + 1
        return None

    def get_expanded(self, key: str, env: Mapping[str, str]) -> str | None:
        """The value of `key` with `$VAR` / `${VAR}` substituted from `env` (see `expand`).

        Raises ConfigError naming the file, line and key when a variable is undefined.
        """
        value = self.get(key)
        if value is None:
            return None
        try:
            return expand(value, env)
        except ExpandError as e:
            raise ConfigError(self.path, self.line_of(key), key, e.reason) from None

    # ---- editing --------------------------------------------------------------------------------

    def _check(self, key: str, value: str | None = None) -> None:
        if not KEY_RE.fullmatch(key):
            raise ConfigError(self.path, None, key, "invalid key name (must match [A-Za-z_][A-Za-z0-9_]*)")
        if value is not None:
            try:
                quote(value)
            except ValueError as e:
                raise ConfigError(self.path, None, key, str(e)) from None

    def set(self, key: str, value: str) -> None:
        """Give `key` the value `value`, changing only that key's line (or appending one).

        The last occurrence is rewritten in place; setting the value it already has changes nothing, so
        the original spelling (quotes, unquoted) stays. Raises ConfigError for a bad key name or a value
        with a newline or NUL.
        """
        self._check(key, value)
        idx = self.line_of(key)
        if idx is not None:
            line = self._lines[idx - 1]
            if line.value == value:
                return
            line.value = value
            line.text = f"{line.prefix}{key}={quote(value)}{line.suffix}"
            return
        eol = next((ln.eol for ln in self._lines if ln.eol), "\n")
        if self._lines and not self._lines[-1].eol:
            self._lines[-1].eol = eol
        self._lines.append(_Line(f"{key}={quote(value)}", eol, key, value))

    def unset(self, key: str) -> bool:
        """Remove every line assigning `key` (removing only the last would revive an earlier one).

        Returns whether anything was removed.
        """
        self._check(key)
        before = len(self._lines)
        self._lines = [line for line in self._lines if line.key != key]
        return len(self._lines) != before

    def update_values(self, changes: Mapping[str, str | None]) -> None:
        """Apply `changes` in order: a str sets the key, None unsets it (the shape `apply_params` returns)."""
        for key, value in changes.items():
            if value is None:
                self.unset(key)
            else:
                self.set(key, value)

    # ---- writing --------------------------------------------------------------------------------

    def render(self) -> str:
        """The file's text: byte-for-byte the parsed input when nothing was changed."""
        return "".join(line.text + line.eol for line in self._lines)

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write atomically to `path` (default: the path it was loaded from), mode 0644.

        A temporary file in the same directory is written, fsynced and renamed over the target, then
        the directory is fsynced: a crash leaves either the old or the new file, never a torn one.
        """
        target = os.fspath(path) if path is not None else self.path
        directory = os.path.dirname(target) or "."
        data = self.render().encode(_ENCODING, _ERRORS)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), _FILE_MODE)
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load(path: str | os.PathLike[str]) -> ConfFile:
    """Read and parse the config file at `path` (same as `ConfFile.load`)."""
    return ConfFile.load(path)


_NAME_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Substitute `$NAME` and `${NAME}` in `value` from `env` (vz.conf's `VE_ROOT=.../$VEID`).

    A `$` not followed by a name or `{` is kept literally. An undefined variable raises ExpandError
    instead of expanding to "" as sh would: an empty `$VEID` would turn a container's root into the
    parent of all roots. Use it only on keys meant to be expanded (paths), never on free text such as
    DESCRIPTION, where a written `\\$` reads back as a plain `$`.
    """
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        if value[i + 1] == "{":
            end = value.find("}", i + 2)
            if end < 0:
                raise ExpandError(value[i + 2 :], f"unterminated '${{' in {value!r}")
            name = value[i + 2 : end]
            if not _NAME.fullmatch(name):
                raise ExpandError(name, f"bad variable name {name!r} in {value!r}")
            i = end + 1
        elif _NAME_START.match(value, i + 1):
            m = _NAME.match(value, i + 1)
            assert m is not None
            name = m.group(0)
            i = m.end()
        else:
            out.append(c)
            i += 1
            continue
        if name not in env:
            raise ExpandError(name, f"undefined variable ${name} in {value!r}")
        out.append(env[name])
    return "".join(out)
