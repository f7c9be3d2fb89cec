"""Container parameters: the registry, value parsing, and typed access for the agent.

One place decides what `vzctl create` / `vzctl set` options mean and how they are stored in `CTID.conf`:

- `known_params()` lists every option (for `--help` and the docs);
- the `parse_*` functions validate one value each and raise `ParamError` with a reason a user can act on;
- `apply_params` turns an ordered list of command-line changes into the config keys to write;
- `ContainerConfig.from_conf` reads a stored config back into typed values, refusing a bad stored value
  with a `ConfigError` that names the file, line and key.

Everything here is pure: no file system, no kernel, no randomness (a missing MAC of `--netif_add` is left
for the agent to generate).

Units, as in OpenVZ:
- sizes take K, M, G, T, P suffixes (powers of 1024, case-insensitive, ``K`` = ``KB`` = ``KiB``; ``B`` is
  bytes); a fraction needs a suffix (``2.2G``) and is rounded down to whole bytes;
- page-based beancounters (physpages, swappages, privvmpages, shmpages, lockedpages, vmguarpages,
  oomguarpages) take a plain number of 4 KiB pages, or a size with a suffix, which means bytes;
- byte beancounters (kmemsize, tcpsndbuf, ...) take bytes; counts (numproc, numfile, ...) take no suffix;
- diskspace is in 1 KiB blocks or a size with a suffix; iolimit is in MiB/s or a size with a suffix.

``unlimited`` is accepted wherever a limit is; it is represented by `UNLIMITED`, which is ``None``, so
the type checker makes every caller handle it. A plain 9223372036854775807 (LONG_MAX, what old vzctl
versions wrote for unlimited) reads as unlimited too. Sizes are stored back in a canonical form: with
the largest exact suffix when the amount is a whole number of MiB (``PHYSPAGES="0:256M"``), otherwise as
a plain number in the parameter's own unit (rounded up to whole units).
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final, Literal, TypeAlias, TypeVar, overload

from agent.config.conffile import ConfFile, ConfigError

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "FEATURES",
    "LINUX_CAPABILITIES",
    "MAX_VALUE",
    "PAGE_SIZE",
    "UNLIMITED",
    "BarrierLimit",
    "ContainerConfig",
    "NetIf",
    "Param",
    "ParamError",
    "ParamKind",
    "UnknownParamError",
    "apply_params",
    "format_size",
    "known_params",
    "lookup_param",
    "parse_barrier_limit",
    "parse_bool",
    "parse_capability",
    "parse_count",
    "parse_cpu_list",
    "parse_cpulimit",
    "parse_cpus",
    "parse_description",
    "parse_devnode",
    "parse_diskspace",
    "parse_domain",
    "parse_feature",
    "parse_hostname",
    "parse_int",
    "parse_iolimit",
    "parse_ip",
    "parse_ip_address",
    "parse_name",
    "parse_netfilter",
    "parse_netif",
    "parse_ostemplate",
    "parse_size",
    "parse_userpasswd",
]

UNLIMITED: Final = None
"""How parsers report ``unlimited``: a limit of type ``int | None`` is unlimited when it is None."""

MAX_VALUE: Final = 2**63 - 1
"""The largest amount accepted (bytes or count): LONG_MAX, as in the kernel's beancounters."""

PAGE_SIZE: Final = 4096
KIB: Final = 1024
MIB: Final = 1024**2
MAX_CPU_ID: Final = 8191  # the kernel's largest NR_CPUS; also bounds NUMA node ids
MAX_INT32: Final = 2**31 - 1
DEFAULT_STOP_TIMEOUT: Final = 60

BarrierLimit: TypeAlias = tuple[int | None, int | None]
"""(barrier, limit) or (soft, hard); None on either side means unlimited."""

_T = TypeVar("_T")


# ---- errors -------------------------------------------------------------------------------------


def _display_option(option: str) -> str:
    if not option:
        return ""
    return option if option.startswith("-") else "--" + option


class ParamError(ValueError):
    """An option value is invalid.

    ``str(err)``: ``invalid value for --ram: '12Q': unknown size suffix 'Q' (use K, M, G, T or P)``.
    `option` is shown with its dashes ("" when the value did not come from an option).
    """

    def __init__(self, option: str, value: str | None, reason: str) -> None:
        super().__init__(option, value, reason)
        self.option = _display_option(option)
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        target = f" for {self.option}" if self.option else ""
        if self.value is None:
            return f"invalid{target}: {self.reason}"
        return f"invalid value{target}: {self.value!r}: {self.reason}"


class UnknownParamError(ParamError):
    """No such option; `suggestions` holds the closest known option names (with dashes)."""

    def __init__(self, option: str, suggestions: Sequence[str]) -> None:
        self.suggestions = tuple(suggestions)
        if self.suggestions:
            hint = "did you mean " + " or ".join(self.suggestions) + "?"
        else:
            hint = "see `vzctl set --help` for the known options"
        super().__init__(option, None, hint)

    def __str__(self) -> str:
        return f"unknown option {self.option} ({self.reason})"


# ---- sizes and counts ---------------------------------------------------------------------------

_AMOUNT_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?([A-Za-z]*)")
_SUFFIXES: Final[dict[str, int]] = {"b": 1}
for _i, _letter in enumerate("kmgtp", start=1):
    for _form in (_letter, _letter + "b", _letter + "ib"):
        _SUFFIXES[_form] = 1024**_i


def _parse_amount(
    text: str,
    default_unit: int,
    *,
    option: str,
    shown: str,
    allow_unlimited: bool,
    suffixes: bool,
) -> int | None:
    s = text.strip()
    if not s:
        raise ParamError(option, shown, "empty value")
    if s.lower() == "unlimited":
        if allow_unlimited:
            return UNLIMITED
        raise ParamError(option, shown, "'unlimited' is not allowed here")
    if s.startswith("-"):
        raise ParamError(option, shown, "negative values are not allowed")
    if len(s) > 40:  # also keeps int() away from its digit limit
        raise ParamError(option, shown, "value too long")
    m = _AMOUNT_RE.fullmatch(s)
    if m is None:
        what = "a number or a size such as 512M" if suffixes else "a whole number"
        raise ParamError(option, shown, f"not {what}")
    whole, frac, suffix = m.groups()
    if suffix:
        if not suffixes:
            raise ParamError(option, shown, f"a count takes no size suffix ({suffix!r})")
        mult = _SUFFIXES.get(suffix.lower())
        if mult is None:
            raise ParamError(option, shown, f"unknown size suffix {suffix!r} (use K, M, G, T or P)")
    else:
        mult = default_unit
    if frac is not None:
        if mult == 1:
            reason = "a fractional value needs a size suffix" if suffixes else "must be a whole number"
            raise ParamError(option, shown, reason)
        value = math.floor(Fraction(f"{whole}.{frac}") * mult)
    else:
        number = int(whole)
        if number == MAX_VALUE and not suffix and allow_unlimited:
            return UNLIMITED  # what old vzctl versions stored for unlimited
        value = number * mult
    if value > MAX_VALUE:
        unit = " bytes" if suffixes else ""
        raise ParamError(option, shown, f"too large (the maximum is {MAX_VALUE}{unit})")
    return value


@overload
def parse_size(
    text: str, default_unit: int = 1, *, option: str = "", allow_unlimited: Literal[False]
) -> int: ...
@overload
def parse_size(
    text: str, default_unit: int = 1, *, option: str = "", allow_unlimited: bool = True
) -> int | None: ...
def parse_size(
    text: str, default_unit: int = 1, *, option: str = "", allow_unlimited: bool = True
) -> int | None:
    """Bytes from ``512``, ``512M``, ``2.2G``, ``1KiB``...; a plain number is in `default_unit` bytes.

    Returns `UNLIMITED` (None) for ``unlimited`` unless `allow_unlimited` is False.
    """
    return _parse_amount(
        text, default_unit, option=option, shown=text, allow_unlimited=allow_unlimited, suffixes=True
    )


@overload
def parse_count(text: str, *, option: str = "", allow_unlimited: Literal[False]) -> int: ...
@overload
def parse_count(text: str, *, option: str = "", allow_unlimited: bool = True) -> int | None: ...
def parse_count(text: str, *, option: str = "", allow_unlimited: bool = True) -> int | None:
    """A non-negative whole number without suffix, or `UNLIMITED` for ``unlimited``."""
    return _parse_amount(text, 1, option=option, shown=text, allow_unlimited=allow_unlimited, suffixes=False)


def parse_barrier_limit(text: str, unit: int, *, option: str = "", suffixes: bool = True) -> BarrierLimit:
    """``barrier:limit`` or one value for both; each side may be ``unlimited``; barrier <= limit.

    Plain numbers are in `unit` bytes (4096 for page-based parameters); with `suffixes` a suffixed size
    means bytes. The result is in bytes (or a count when `suffixes` is False and `unit` is 1).
    """
    parts = text.strip().split(":")
    if len(parts) > 2:
        raise ParamError(option, text, "expected barrier[:limit]")

    def side(part: str) -> int | None:
        return _parse_amount(part, unit, option=option, shown=text, allow_unlimited=True, suffixes=suffixes)

    barrier = side(parts[0])
    limit = barrier if len(parts) == 1 else side(parts[1])
    if limit is not None and (barrier is None or barrier > limit):
        raise ParamError(option, text, f"barrier {parts[0].strip()} is greater than limit {parts[1].strip()}")
    return barrier, limit


def parse_diskspace(text: str, *, option: str = "diskspace") -> BarrierLimit:
    """``soft[:hard]`` in 1 KiB blocks, or sizes with a suffix; returned in 1 KiB blocks (rounded up)."""
    soft, hard = parse_barrier_limit(text, KIB, option=option)
    return _ceil_div(soft, KIB), _ceil_div(hard, KIB)


def _ceil_div(value: int | None, unit: int) -> int | None:
    return None if value is None else -(-value // unit)


def format_size(n: int) -> str:
    """`n` bytes with the largest suffix that divides it exactly (``268435456`` -> ``256M``), else plain."""
    if n > 0:
        for power, letter in ((5, "P"), (4, "T"), (3, "G"), (2, "M"), (1, "K")):
            unit = 1024**power
            if n % unit == 0:
                return f"{n // unit}{letter}"
    return str(n)


def _format_amount(value: int | None, unit: int) -> str:
    """The canonical stored form of an amount of bytes whose plain numbers are in `unit` bytes."""
    if value is None:
        return "unlimited"
    if value > 0 and value % MIB == 0:
        return format_size(value)
    return str(-(-value // unit))


def _format_pair(pair: BarrierLimit, unit: int, *, counts: bool = False) -> str:
    def one(v: int | None) -> str:
        if counts:
            return "unlimited" if v is None else str(v)
        return _format_amount(v, unit)

    if pair == (None, None):
        return "unlimited"
    return f"{one(pair[0])}:{one(pair[1])}"


# ---- integers and CPU ---------------------------------------------------------------------------


def parse_int(text: str, minimum: int, maximum: int, *, option: str = "") -> int:
    """A whole number within [minimum, maximum]."""
    s = text.strip()
    if not re.fullmatch(r"-?[0-9]{1,19}", s):
        raise ParamError(option, text, f"must be a whole number between {minimum} and {maximum}")
    n = int(s)
    if not minimum <= n <= maximum:
        raise ParamError(option, text, f"must be between {minimum} and {maximum}")
    return n


def parse_cpulimit(text: str, *, option: str = "cpulimit") -> int:
    """``N`` or ``N%``: percent of one CPU (100 = one full CPU, 0 = unlimited)."""
    s = text.strip()
    if s.lower().endswith("m") and s[:-1].isdigit():
        raise ParamError(
            option, text, "limits in MHz are not supported; give a percentage of one CPU, e.g. 50 or 50%"
        )
    return parse_int(s.removesuffix("%"), 0, MAX_INT32, option=option)


def parse_cpus(text: str, *, option: str = "cpus") -> int | None:
    """Number of CPUs (>= 1); ``unlimited`` or ``0`` gives None (all of the node's CPUs)."""
    s = text.strip()
    if s.lower() == "unlimited":
        return None
    n = parse_int(s, 0, MAX_CPU_ID + 1, option=option)
    return n or None


def parse_cpu_list(text: str, *, option: str = "cpumask") -> str | None:
    """A CPU (or NUMA node) list such as ``0-3,5``, normalised (sorted, merged); None for ``all``."""
    s = text.strip()
    if s.lower() == "all":
        return None
    if not s:
        raise ParamError(option, text, "empty list (use e.g. 0-3,5 or all)")
    ranges: list[tuple[int, int]] = []
    for item in s.split(","):
        m = re.fullmatch(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?", item)
        if m is None:
            raise ParamError(option, text, f"bad list item {item.strip()!r} (use e.g. 0-3,5 or all)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo > hi:
            raise ParamError(option, text, f"range {lo}-{hi} goes backwards")
        if hi > MAX_CPU_ID:
            raise ParamError(option, text, f"{hi} is above the largest possible id {MAX_CPU_ID}")
        ranges.append((lo, hi))
    ranges.sort()
    merged: list[list[int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged)


def parse_iolimit(text: str, *, option: str = "iolimit") -> int:
    """Bytes per second; a plain number is MiB/s (as in OpenVZ); 0 or ``unlimited`` = no limit."""
    value = parse_size(text, MIB, option=option)
    return 0 if value is None else value


def _format_iolimit(value: int) -> str:
    # always with a unit: a plain number means MiB/s on the command line but bytes in old configs
    text = format_size(value)
    return text if not text.isdigit() or value == 0 else text + "B"


def _parse_stored_iolimit(text: str) -> int:
    value = parse_size(text, 1, option="IOLIMIT")  # vzctl stored plain bytes
    return 0 if value is None else value


# ---- names and text -----------------------------------------------------------------------------


def parse_bool(text: str, *, option: str = "") -> bool:
    """``yes`` or ``no`` (any case)."""
    s = text.strip().lower()
    if s == "yes":
        return True
    if s == "no":
        return False
    raise ParamError(option, text, "must be yes or no")


_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _check_dns_name(text: str, option: str, what: str) -> str:
    s = text.strip()
    if not s:
        raise ParamError(option, text, f"empty {what}")
    if len(s) > 253:
        raise ParamError(option, text, f"{what} longer than 253 characters")
    for label in s.split("."):
        if not label:
            raise ParamError(option, text, f"empty label in {what} (leading, trailing or double dot)")
        if len(label) > 63:
            raise ParamError(option, text, f"label {label[:20]!r}... longer than 63 characters")
        if not _LABEL_RE.fullmatch(label):
            raise ParamError(
                option,
                text,
                f"bad label {label!r}: use letters, digits and inner hyphens only (RFC 1123)",
            )
    return s


def parse_hostname(text: str, *, option: str = "hostname") -> str:
    """An RFC 1123 host name: at most 253 characters, labels of 1..63 letters, digits, inner hyphens."""
    return _check_dns_name(text, option, "hostname")


def parse_domain(text: str, *, option: str = "searchdomain") -> str:
    """A DNS domain name (same rules as a host name)."""
    return _check_dns_name(text, option, "domain name")


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_name(text: str, *, option: str = "name") -> str:
    """A container name alias: ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``, not all digits (that is a CTID)."""
    s = text.strip()
    if not _NAME_RE.fullmatch(s):
        raise ParamError(
            option, text, "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if s.isdigit():
        raise ParamError(option, text, "a name must not be all digits (it would read as a CTID)")
    return s


def parse_description(text: str, *, option: str = "description") -> str:
    """Free printable text, at most 1024 characters, one line."""
    if len(text) > 1024:
        raise ParamError(option, text[:40] + "...", "longer than 1024 characters")
    if "\n" in text or "\r" in text:
        raise ParamError(option, text, "must be a single line")
    if not text.isprintable():
        raise ParamError(option, text, "contains control characters")
    return text


_OSTEMPLATE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def parse_ostemplate(text: str, *, option: str = "ostemplate") -> str:
    """An OS template name such as ``debian-12-x86_64-minimal`` (no path)."""
    s = text.strip()
    if not _OSTEMPLATE_RE.fullmatch(s):
        raise ParamError(option, text, "use letters, digits, '.', '_', '+' or '-' (a name, not a path)")
    return s


def parse_ip(text: str, *, option: str = "nameserver") -> str:
    """One IPv4 or IPv6 address, normalised (``::0001`` -> ``::1``)."""
    s = text.strip()
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise ParamError(option, text, "not an IPv4 or IPv6 address") from None


def parse_ip_address(text: str, *, option: str = "ipadd") -> str:
    """A container address: IPv4 or IPv6 with an optional ``/prefix`` (a v4 netmask is turned into one).

    Unspecified, loopback and multicast addresses are refused.
    """
    s = text.strip()
    try:
        iface = ipaddress.ip_interface(s)
    except ValueError:
        raise ParamError(option, text, "not an IPv4 or IPv6 address (with an optional /prefix)") from None
    ip = iface.ip
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast:
        kind = "an unspecified" if ip.is_unspecified else "a loopback" if ip.is_loopback else "a multicast"
        raise ParamError(option, text, f"{kind} address cannot be given to a container")
    return f"{ip}/{iface.network.prefixlen}" if "/" in s else str(ip)


def _ip_key(token: str) -> str:
    """The address part of an IP_ADDRESS entry, for comparisons (prefix ignored)."""
    try:
        return str(ipaddress.ip_interface(token).ip)
    except ValueError:
        return token


# ---- switches: capabilities, features, netfilter, devnodes --------------------------------------

LINUX_CAPABILITIES: Final = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip
"""Linux capability names (capability(7)) in kernel order, lower case and without ``cap_``."""

FEATURES: Final = ("sysfs", "nfs", "sit", "ipip", "ppp", "ipgre", "bridge", "nfsd")
"""OpenVZ container features accepted by ``--features name:on|off``."""

NETFILTER_MODES: Final = ("disabled", "stateless", "stateful", "full")


def _parse_switch(text: str, option: str, names: Sequence[str], what: str) -> tuple[str, bool]:
    name, sep, state = text.partition(":")
    name = name.strip().lower()
    state = state.strip().lower()
    if not sep or state not in ("on", "off"):
        raise ParamError(option, text, f"use {what}:on or {what}:off")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ParamError(option, text, f"unknown {what} {name!r}{hint}")
    return name, state == "on"


def parse_capability(text: str, *, option: str = "capability") -> tuple[str, bool]:
    """``net_admin:on`` -> ("net_admin", True); names case-insensitive, ``CAP_`` prefix optional."""
    name, sep, rest = text.partition(":")
    stripped = name.strip()
    if stripped.lower().startswith("cap_"):
        stripped = stripped[4:]
    return _parse_switch(stripped + sep + rest, option, LINUX_CAPABILITIES, "capability")


def parse_feature(text: str, *, option: str = "features") -> tuple[str, bool]:
    """``nfs:on`` -> ("nfs", True); names from `FEATURES`."""
    return _parse_switch(text, option, FEATURES, "feature")


def parse_netfilter(text: str, *, option: str = "netfilter") -> str:
    """One of disabled, stateless, stateful, full."""
    s = text.strip().lower()
    if s not in NETFILTER_MODES:
        raise ParamError(option, text, "must be one of " + ", ".join(NETFILTER_MODES))
    return s


_DEVNODE_RE = re.compile(r"[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*")


def parse_devnode(text: str, *, option: str = "devnodes") -> tuple[str, str]:
    """``device:perms`` with a device below /dev (``net/tun``) and perms r, w, rw, q, rq, wq, rwq or none."""
    dev, sep, perms = text.strip().rpartition(":")
    dev = dev.strip().removeprefix("/dev/")
    perms = perms.strip().lower()
    if not sep:
        raise ParamError(option, text, "use device:r|w|rw|none, e.g. net/tun:rw")
    if not _DEVNODE_RE.fullmatch(dev) or any(part in (".", "..") for part in dev.split("/")):
        raise ParamError(option, text, f"bad device name {dev!r} (a path below /dev such as net/tun)")
    if perms != "none" and (not perms or not set(perms) <= set("rwq") or len(set(perms)) != len(perms)):
        raise ParamError(option, text, f"bad permissions {perms!r} (use r, w, rw, q or none)")
    if perms != "none":
        perms = "".join(c for c in "rwq" if c in perms)
    return dev, perms


_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")


def parse_userpasswd(text: str, *, option: str = "userpasswd") -> tuple[str, str]:
    """``user:password`` -> (user, password). Validated only: never stored in a config file."""
    user, sep, password = text.partition(":")
    if not sep:
        raise ParamError(option, "<hidden>", "use user:password")
    if not _USER_RE.fullmatch(user):
        raise ParamError(option, "<hidden>", f"bad user name {user!r}")
    if not password:
        raise ParamError(option, "<hidden>", "empty password")
    if "\n" in password or "\0" in password or not password.isprintable():
        raise ParamError(option, "<hidden>", "the password contains control characters")
    return user, password


# ---- network interfaces (veth) ------------------------------------------------------------------

_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_NETIF_FIELDS: Final = ("ifname", "mac", "host_ifname", "host_mac", "bridge")


def _check_ifname(value: str, option: str, shown: str, what: str) -> str:
    if not _IFNAME_RE.fullmatch(value):
        raise ParamError(option, shown, f"bad {what} {value!r} (1 to 15 letters, digits, '_', '.', '-')")
    return value


def _check_mac(value: str, option: str, shown: str) -> str:
    if not _MAC_RE.fullmatch(value):
        raise ParamError(option, shown, f"bad MAC address {value!r} (use XX:XX:XX:XX:XX:XX)")
    first = int(value[:2], 16)
    if first & 1:
        raise ParamError(option, shown, f"MAC address {value} is a multicast address")
    if value.replace(":", "").strip("0") == "":
        raise ParamError(option, shown, "MAC address 00:00:00:00:00:00 is not allowed")
    return value.upper()


@dataclass(frozen=True)
class NetIf:
    """A veth interface of a container (NETIF entry); None fields are chosen by the agent."""

    ifname: str
    mac: str | None = None
    host_ifname: str | None = None
    host_mac: str | None = None
    bridge: str | None = None

    def to_conf(self) -> str:
        """The NETIF entry: ``ifname=eth0,mac=...,host_ifname=...,host_mac=...,bridge=...``."""
        return ",".join(f"{k}={v}" for k in _NETIF_FIELDS if (v := getattr(self, k)) is not None)

    @classmethod
    def from_conf(cls, entry: str, *, option: str = "NETIF") -> NetIf:
        """Parse one NETIF entry (``key=value`` pairs separated by commas)."""
        values: dict[str, str] = {}
        for pair in entry.split(","):
            k, sep, v = pair.strip().partition("=")
            if not sep or k not in _NETIF_FIELDS:
                raise ParamError(option, entry, f"bad NETIF field {pair.strip()!r}")
            if v:
                values[k] = v
        if "ifname" not in values:
            raise ParamError(option, entry, "NETIF entry without ifname")
        return _make_netif(values, option, entry)


def _make_netif(values: Mapping[str, str], option: str, shown: str) -> NetIf:
    ifname = _check_ifname(values["ifname"], option, shown, "interface name")
    mac = values.get("mac")
    host_ifname = values.get("host_ifname")
    host_mac = values.get("host_mac")
    bridge = values.get("bridge")
    return NetIf(
        ifname=ifname,
        mac=_check_mac(mac, option, shown) if mac else None,
        host_ifname=_check_ifname(host_ifname, option, shown, "host interface name") if host_ifname else None,
        host_mac=_check_mac(host_mac, option, shown) if host_mac else None,
        bridge=_check_ifname(bridge, option, shown, "bridge name") if bridge else None,
    )


def parse_netif(text: str, *, option: str = "netif_add") -> NetIf:
    """``ifname[,mac,host_ifname,host_mac,bridge]`` as given to ``--netif_add`` (empty fields allowed)."""
    parts = [p.strip() for p in text.strip().split(",")]
    if len(parts) > len(_NETIF_FIELDS):
        raise ParamError(option, text, "use ifname[,mac,host_ifname,host_mac,bridge]")
    if not parts[0]:
        raise ParamError(option, text, "missing interface name")
    return _make_netif({k: v for k, v in zip(_NETIF_FIELDS, parts, strict=False) if v}, option, text)


def _netif_name(entry: str) -> str | None:
    """The ifname of a stored NETIF entry, read leniently (merging must not fail on other fields)."""
    for pair in entry.split(","):
        k, _, v = pair.strip().partition("=")
        if k == "ifname":
            return v
    return None


def _parse_netifs(text: str, option: str) -> list[NetIf]:
    return [NetIf.from_conf(e, option=option) for e in text.split(";") if e.strip()]


# ---- the registry -------------------------------------------------------------------------------


class ParamKind(enum.StrEnum):
    """How a parameter's value is parsed, merged and stored."""

    PAGES = "pages"  # barrier:limit, 4 KiB pages or a size with a suffix
    BYTES = "bytes"  # barrier:limit in bytes
    COUNT = "count"  # barrier:limit (soft:hard) counts, no suffix
    MEMORY = "memory"  # one size in bytes, stored as the limit "0:SIZE" of a page-based key
    DISKSPACE = "diskspace"  # soft:hard in 1 KiB blocks or sizes
    INTEGER = "integer"  # a whole number within [minimum, maximum]
    CPULIMIT = "cpulimit"
    CPUS = "cpus"
    CPU_LIST = "cpu-list"
    IOLIMIT = "iolimit"
    BOOLEAN = "boolean"  # yes|no
    HOSTNAME = "hostname"
    NAME = "name"
    DESCRIPTION = "description"
    OSTEMPLATE = "ostemplate"
    NAMESERVER = "nameserver"  # repeatable list
    SEARCHDOMAIN = "searchdomain"  # repeatable list
    IP_ADD = "ip-add"  # repeatable, merged into the list
    IP_DEL = "ip-del"  # repeatable, removed from the list
    NETIF_ADD = "netif-add"
    NETIF_DEL = "netif-del"
    CAPABILITY = "capability"  # repeatable name:on|off
    FEATURE = "feature"  # repeatable name:on|off
    NETFILTER = "netfilter"
    DEVNODES = "devnodes"  # repeatable device:perms
    USERPASSWD = "userpasswd"  # validated, never stored


_REPEATABLE: Final = frozenset(
    {
        ParamKind.NAMESERVER,
        ParamKind.SEARCHDOMAIN,
        ParamKind.IP_ADD,
        ParamKind.IP_DEL,
        ParamKind.NETIF_ADD,
        ParamKind.NETIF_DEL,
        ParamKind.CAPABILITY,
        ParamKind.FEATURE,
        ParamKind.DEVNODES,
        ParamKind.USERPASSWD,
    }
)


@dataclass(frozen=True)
class Param:
    """One option of `vzctl create` / `vzctl set`.

    `name` is the option without dashes (``ram``); `conf_key` the config key it writes (None for
    ``userpasswd``, which is never stored); `live` says whether it can be applied to a running container
    without a restart; `minimum` / `maximum` bound INTEGER parameters.
    """

    name: str
    conf_key: str | None
    kind: ParamKind
    live: bool
    help: str
    minimum: int | None = None
    maximum: int | None = None

    @property
    def option(self) -> str:
        """The option as typed: ``--ram``."""
        return "--" + self.name

    @property
    def repeatable(self) -> bool:
        """Whether giving the option several times accumulates (``--ipadd A --ipadd B``)."""
        return self.kind in _REPEATABLE


def _p(name: str, key: str | None, kind: ParamKind, live: bool, help: str, lo: int | None = None,
       hi: int | None = None) -> Param:  # fmt: skip
    return Param(name, key, kind, live, help, lo, hi)


K = ParamKind
# fmt: off
_PARAMS: Final[tuple[Param, ...]] = (
    # general
    _p("onboot", "ONBOOT", K.BOOLEAN, True, "start the container when the node boots: yes|no"),
    _p("bootorder", "BOOTORDER", K.INTEGER, True, "boot order; higher starts first", 0, MAX_INT32),
    _p("disabled", "DISABLED", K.BOOLEAN, True,
       "yes refuses to start the container (start --force overrides)"),
    _p("name", "NAME", K.NAME, True, "name alias usable instead of the CTID"),
    _p("description", "DESCRIPTION", K.DESCRIPTION, True, "free text, one line, at most 1024 characters"),
    _p("ostemplate", "OSTEMPLATE", K.OSTEMPLATE, False, "OS template the private area was created from"),
    _p("stop-timeout", "STOP_TIMEOUT", K.INTEGER, True,
       "seconds a clean stop may take before the container is killed", 1, 3600),
    _p("userpasswd", None, K.USERPASSWD, True, "user:password - set a password inside (never stored)"),
    # network
    _p("hostname", "HOSTNAME", K.HOSTNAME, True, "host name inside the container (RFC 1123)"),
    _p("ipadd", "IP_ADDRESS", K.IP_ADD, True, "add an IPv4/IPv6 address[/prefix] (repeatable)"),
    _p("ipdel", "IP_ADDRESS", K.IP_DEL, True, "remove an address, or all (repeatable)"),
    _p("nameserver", "NAMESERVER", K.NAMESERVER, True,
       "DNS server address, or inherit (repeatable; replaces the stored list)"),
    _p("searchdomain", "SEARCHDOMAIN", K.SEARCHDOMAIN, True,
       "DNS search domain, or inherit (repeatable; replaces the stored list)"),
    _p("netif_add", "NETIF", K.NETIF_ADD, True, "add a veth: ifname[,mac,host_ifname,host_mac,bridge]"),
    _p("netif_del", "NETIF", K.NETIF_DEL, True, "remove a veth by its name inside, or all"),
    _p("netfilter", "NETFILTER", K.NETFILTER, False, "netfilter access: disabled|stateless|stateful|full"),
    # memory
    _p("ram", "PHYSPAGES", K.MEMORY, True, "RAM limit in bytes (K, M, G suffixes); sets physpages 0:RAM"),
    _p("swap", "SWAPPAGES", K.MEMORY, True, "swap limit in bytes; sets swappages 0:SWAP"),
    _p("physpages", "PHYSPAGES", K.PAGES, True, "RAM, barrier:limit in 4 KiB pages or sizes"),
    _p("swappages", "SWAPPAGES", K.PAGES, True, "swap, barrier:limit in 4 KiB pages or sizes"),
    _p("privvmpages", "PRIVVMPAGES", K.PAGES, False, "allocated memory, barrier:limit in pages or sizes"),
    _p("shmpages", "SHMPAGES", K.PAGES, False, "IPC shared memory, barrier:limit in pages or sizes"),
    _p("lockedpages", "LOCKEDPAGES", K.PAGES, False, "mlock()ed memory, barrier:limit in pages or sizes"),
    _p("vmguarpages", "VMGUARPAGES", K.PAGES, False, "memory allocation guarantee, in pages or sizes"),
    _p("oomguarpages", "OOMGUARPAGES", K.PAGES, False, "out-of-memory guarantee, in pages or sizes"),
    _p("kmemsize", "KMEMSIZE", K.BYTES, False, "kernel memory, barrier:limit in bytes"),
    _p("tcpsndbuf", "TCPSNDBUF", K.BYTES, False, "TCP send buffers, barrier:limit in bytes"),
    _p("tcprcvbuf", "TCPRCVBUF", K.BYTES, False, "TCP receive buffers, barrier:limit in bytes"),
    _p("othersockbuf", "OTHERSOCKBUF", K.BYTES, False, "other socket buffers, barrier:limit in bytes"),
    _p("dgramrcvbuf", "DGRAMRCVBUF", K.BYTES, False, "datagram receive buffers, barrier:limit in bytes"),
    _p("dcachesize", "DCACHESIZE", K.BYTES, False, "dentry/inode cache, barrier:limit in bytes"),
    # counts
    _p("numproc", "NUMPROC", K.COUNT, True, "processes and threads, barrier:limit"),
    _p("avnumproc", "AVNUMPROC", K.COUNT, False, "expected average number of processes"),
    _p("numfile", "NUMFILE", K.COUNT, False, "open files, barrier:limit"),
    _p("numflock", "NUMFLOCK", K.COUNT, False, "file locks, barrier:limit"),
    _p("numpty", "NUMPTY", K.COUNT, False, "pseudo-terminals, barrier:limit"),
    _p("numsiginfo", "NUMSIGINFO", K.COUNT, False, "pending signals, barrier:limit"),
    _p("numtcpsock", "NUMTCPSOCK", K.COUNT, False, "TCP sockets, barrier:limit"),
    _p("numothersock", "NUMOTHERSOCK", K.COUNT, False, "non-TCP sockets, barrier:limit"),
    _p("numiptent", "NUMIPTENT", K.COUNT, False, "netfilter rules, barrier:limit"),
    # disk
    _p("diskspace", "DISKSPACE", K.DISKSPACE, True, "disk space soft[:hard] in 1 KiB blocks or sizes"),
    _p("diskinodes", "DISKINODES", K.COUNT, True, "inodes soft[:hard]"),
    _p("quotatime", "QUOTATIME", K.INTEGER, True, "seconds the soft disk limit may be exceeded",
       0, MAX_INT32),
    _p("quotaugidlimit", "QUOTAUGIDLIMIT", K.INTEGER, False,
       "number of user/group ids for quotas inside (0 = off)", 0, MAX_INT32),
    # cpu and io
    _p("cpuunits", "CPUUNITS", K.INTEGER, True, "CPU weight, 8..500000 (default 1000)", 8, 500_000),
    _p("cpulimit", "CPULIMIT", K.CPULIMIT, True, "CPU limit in percent of one CPU (N or N%; 0 = none)"),
    _p("cpus", "CPUS", K.CPUS, True, "number of CPUs the container may use, or unlimited"),
    _p("cpumask", "CPUMASK", K.CPU_LIST, True, "CPUs the container may run on: e.g. 0-3,5 or all"),
    _p("nodemask", "NODEMASK", K.CPU_LIST, True, "NUMA nodes the container may allocate on, or all"),
    _p("ioprio", "IOPRIO", K.INTEGER, True, "disk I/O priority 0..7 (default 4)", 0, 7),
    _p("iolimit", "IOLIMIT", K.IOLIMIT, True, "disk bandwidth limit, MiB/s or a size per second; 0 = none"),
    _p("iopslimit", "IOPSLIMIT", K.INTEGER, True, "disk I/O operations per second; 0 = none", 0, MAX_INT32),
    # security
    _p("capability", "CAPABILITY", K.CAPABILITY, False, "cap:on|off, e.g. net_admin:on (repeatable)"),
    _p("features", "FEATURES", K.FEATURE, False, "name:on|off, e.g. nfs:on (repeatable)"),
    _p("devnodes", "DEVNODES", K.DEVNODES, True, "device:r|w|rw|none below /dev, e.g. net/tun:rw"),
)
# fmt: on
del K

_BY_NAME: Final[dict[str, Param]] = {p.name.replace("_", "-"): p for p in _PARAMS}


def known_params() -> list[Param]:
    """Every option of create/set, in a stable, documented order."""
    return list(_PARAMS)


def lookup_param(option: str) -> Param:
    """The Param for ``--ram`` / ``ram`` (``_`` and ``-`` are interchangeable).

    Raises UnknownParamError listing the closest known options.
    """
    name = option.lstrip("-")
    param = _BY_NAME.get(name.replace("_", "-"))
    if param is None:
        close = difflib.get_close_matches(name.replace("_", "-"), list(_BY_NAME), n=3, cutoff=0.6)
        raise UnknownParamError(option, ["--" + _BY_NAME[c].name for c in close])
    return param


# ---- apply --------------------------------------------------------------------------------------


def _split_list(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", text.strip()) if t]


def _set_list(tokens: Iterable[str]) -> str:
    return " ".join(tokens)


def _merge_switch(current: str, name: str, rendered: str, key: Callable[[str], str]) -> str:
    """Replace the entry of `name` in a space-separated ``name:state`` list, or append it."""
    tokens = current.split()
    for i, token in enumerate(tokens):
        if key(token.partition(":")[0]) == name:
            tokens[i] = rendered
            return " ".join(tokens)
    tokens.append(rendered)
    return " ".join(tokens)


def _cap_key(name: str) -> str:
    n = name.strip().lower()
    return n[4:] if n.startswith("cap_") else n


def _apply_one(param: Param, raw: str, current: Mapping[str, str], first: bool) -> dict[str, str | None]:
    """The config keys one option changes, given the values so far (`first`: first use in this call)."""
    kind = param.kind
    opt = param.name
    key = param.conf_key
    if key is None:  # userpasswd
        parse_userpasswd(raw, option=opt)
        return {}
    cur = current.get(key, "")
    if kind is ParamKind.PAGES:
        return {key: _format_pair(parse_barrier_limit(raw, PAGE_SIZE, option=opt), PAGE_SIZE)}
    if kind is ParamKind.BYTES:
        return {key: _format_pair(parse_barrier_limit(raw, 1, option=opt), 1)}
    if kind is ParamKind.COUNT:
        pair = parse_barrier_limit(raw, 1, option=opt, suffixes=False)
        return {key: _format_pair(pair, 1, counts=True)}
    if kind is ParamKind.MEMORY:
        size = parse_size(raw, 1, option=opt)
        if size == 0 and param.name == "ram":
            raise ParamError(opt, raw, "RAM must be greater than 0")
        return {key: "0:" + _format_amount(size, PAGE_SIZE)}
    if kind is ParamKind.DISKSPACE:
        soft, hard = parse_diskspace(raw, option=opt)
        return {key: _format_pair((_mul(soft, KIB), _mul(hard, KIB)), KIB)}
    if kind is ParamKind.INTEGER:
        assert param.minimum is not None and param.maximum is not None
        return {key: str(parse_int(raw, param.minimum, param.maximum, option=opt))}
    if kind is ParamKind.CPULIMIT:
        return {key: str(parse_cpulimit(raw, option=opt))}
    if kind is ParamKind.CPUS:
        cpus = parse_cpus(raw, option=opt)
        return {key: None if cpus is None else str(cpus)}
    if kind is ParamKind.CPU_LIST:
        return {key: parse_cpu_list(raw, option=opt)}
    if kind is ParamKind.IOLIMIT:
        return {key: _format_iolimit(parse_iolimit(raw, option=opt))}
    if kind is ParamKind.BOOLEAN:
        return {key: "yes" if parse_bool(raw, option=opt) else "no"}
    if kind is ParamKind.HOSTNAME:
        return {key: parse_hostname(raw, option=opt)}
    if kind is ParamKind.NAME:
        return {key: parse_name(raw, option=opt)}
    if kind is ParamKind.DESCRIPTION:
        text = parse_description(raw, option=opt)
        return {key: text if text.strip() else None}
    if kind is ParamKind.OSTEMPLATE:
        return {key: parse_ostemplate(raw, option=opt)}
    if kind is ParamKind.NETFILTER:
        return {key: parse_netfilter(raw, option=opt)}
    if kind in (ParamKind.NAMESERVER, ParamKind.SEARCHDOMAIN):
        items = _split_list(raw)
        if not items:
            raise ParamError(opt, raw, "empty value")
        check = parse_ip if kind is ParamKind.NAMESERVER else parse_domain
        new = [i if i.lower() == "inherit" else check(i, option=opt) for i in items]
        tokens = [] if first else cur.split()
        return {key: _set_list(dict.fromkeys(tokens + new))}
    if kind is ParamKind.IP_ADD:
        items = _split_list(raw)
        if not items:
            raise ParamError(opt, raw, "empty value")
        tokens = cur.split()
        for item in items:
            addr = parse_ip_address(item, option=opt)
            keys = [_ip_key(t) for t in tokens]
            if _ip_key(addr) in keys:
                tokens[keys.index(_ip_key(addr))] = addr  # same address: keep one entry, newest prefix
            else:
                tokens.append(addr)
        return {key: _set_list(tokens)}
    if kind is ParamKind.IP_DEL:
        items = _split_list(raw)
        if not items:
            raise ParamError(opt, raw, "empty value (give an address or all)")
        if [i.lower() for i in items] == ["all"]:
            return {key: ""}
        tokens = cur.split()
        for item in items:
            if "/" in item:
                item = item.split("/", 1)[0]
            target = _ip_key(parse_ip(item, option=opt))
            keys = [_ip_key(t) for t in tokens]
            if target not in keys:
                shown = ", ".join(tokens) if tokens else "none"
                raise ParamError(opt, item, f"the container has no such address (it has: {shown})")
            del tokens[keys.index(target)]
        return {key: _set_list(tokens)}
    if kind is ParamKind.CAPABILITY:
        name, on = parse_capability(raw, option=opt)
        rendered = f"{name.upper()}:{'on' if on else 'off'}"
        return {key: _merge_switch(cur, name, rendered, _cap_key)}
    if kind is ParamKind.FEATURE:
        name, on = parse_feature(raw, option=opt)
        return {key: _merge_switch(cur, name, f"{name}:{'on' if on else 'off'}", str.lower)}
    if kind is ParamKind.DEVNODES:
        dev, perms = parse_devnode(raw, option=opt)
        return {key: _merge_switch(cur, dev, f"{dev}:{perms}", lambda d: d.removeprefix("/dev/"))}
    if kind is ParamKind.NETIF_ADD:
        netif = parse_netif(raw, option=opt)
        existing = [e.strip() for e in cur.split(";") if e.strip()]
        names = [_netif_name(e) or "" for e in existing]
        if netif.ifname in names:
            reason = f"interface {netif.ifname} already exists (remove it with --netif_del)"
            raise ParamError(opt, raw, reason)
        return {key: ";".join([*existing, netif.to_conf()])}
    if kind is ParamKind.NETIF_DEL:
        target = raw.strip()
        if target.lower() == "all":
            return {key: None}
        existing = [e.strip() for e in cur.split(";") if e.strip()]
        names = [_netif_name(e) or "" for e in existing]
        if target not in names:
            shown = ", ".join(names) if names else "none"
            raise ParamError(opt, raw, f"the container has no interface {target!r} (it has: {shown})")
        del existing[names.index(target)]
        return {key: ";".join(existing) if existing else None}
    raise AssertionError(f"unhandled parameter kind {kind}")  # pragma: no cover


def apply_params(conf_values: Mapping[str, str], changes: Sequence[tuple[str, str]]) -> dict[str, str | None]:
    """Validate command-line changes and return the config keys to write (None = remove the key).

    `changes` is the ordered list of (option, raw value) pairs; options are taken in that order, so a
    later option wins over an earlier one writing the same key (``--ram 1G --physpages 0:2G``).
    Repeatable options merge: ``--ipadd`` adds to IP_ADDRESS without duplicates, ``--ipdel all``
    clears it, ``--nameserver`` / ``--searchdomain`` replace the stored list on their first use in a call
    and append after that, ``--capability`` / ``--features`` / ``--devnodes`` replace the entry of the
    same name. Only keys whose value differs from `conf_values` are returned. Raises ParamError (or
    UnknownParamError) for the first bad option; nothing is returned then.
    """
    current = dict(conf_values)
    seen: set[str] = set()
    touched: dict[str, None] = {}
    for option, raw in changes:
        param = lookup_param(option)
        for key, value in _apply_one(param, raw, current, param.name not in seen).items():
            touched[key] = None
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        seen.add(param.name)
    return {k: current.get(k) for k in touched if current.get(k) != conf_values.get(k)}


# ---- typed access -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerConfig:
    """A container's stored configuration, typed. Build it with `from_conf`; treat mappings as read-only.

    Amounts of memory and disk are in bytes, counts are counts; None means unset (or unlimited where
    the field is a limit: `ram_bytes`, `swap_bytes`, either side of a `BarrierLimit`).
    """

    hostname: str | None = None
    name: str | None = None
    description: str | None = None
    ostemplate: str | None = None
    origin_sample: str | None = None
    ve_root: str | None = None  # as stored, may contain $VEID (see conffile.expand)
    ve_private: str | None = None
    ip_addresses: tuple[str, ...] = ()
    nameservers: tuple[str, ...] = ()  # may hold "inherit"
    searchdomains: tuple[str, ...] = ()  # may hold "inherit"
    netifs: tuple[NetIf, ...] = ()
    netfilter: str = "stateless"
    onboot: bool = False
    disabled: bool = False
    bootorder: int | None = None
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    cpuunits: int | None = None
    cpulimit_percent: int = 0  # 0 = no limit
    cpus: int | None = None  # None = all CPUs
    cpumask: str | None = None  # normalised list such as "0-3,5"; None = all
    nodemask: str | None = None
    ioprio: int | None = None
    iolimit_bytes: int = 0  # per second; 0 = no limit
    iopslimit: int = 0  # 0 = no limit
    ram_bytes: int | None = None  # PHYSPAGES limit
    swap_bytes: int | None = None  # SWAPPAGES limit
    numproc: BarrierLimit | None = None
    # every stored beancounter by option name: "kmemsize" -> bytes, "numfile" -> count
    beancounters: dict[str, BarrierLimit] = field(default_factory=dict)
    diskspace_bytes: BarrierLimit | None = None  # (soft, hard)
    diskinodes: BarrierLimit | None = None
    quotatime: int | None = None
    quotaugidlimit: int | None = None
    capabilities: dict[str, bool] = field(default_factory=dict)  # "net_admin" -> True
    features: dict[str, bool] = field(default_factory=dict)
    devnodes: dict[str, str] = field(default_factory=dict)  # "net/tun" -> "rw"

    @classmethod
    def from_conf(
        cls,
        values: Mapping[str, str],
        path: str,
        *,
        line_of: Callable[[str], int | None] | None = None,
    ) -> ContainerConfig:
        """Read the stored values of a CTID.conf (or a sample).

        `path` names the file in errors; `line_of` gives a key's line number, and is taken from `values`
        itself when it is a `ConfFile`. Unknown keys are ignored, empty values count as unset. Raises
        ConfigError naming the file, line and key of the first bad stored value.
        """
        if line_of is None and isinstance(values, ConfFile):
            line_of = values.line_of
        r = _Reader(values, path, line_of)
        beancounters: dict[str, BarrierLimit] = {}
        for p in _PARAMS:
            if p.conf_key is None or p.kind not in (ParamKind.PAGES, ParamKind.BYTES, ParamKind.COUNT):
                continue
            if p.conf_key == "DISKINODES":
                continue
            pair = r.get(p.conf_key, _pair_parser(p.kind), None)
            if pair is not None:
                beancounters[p.name] = pair
        physpages = beancounters.get("physpages")
        swappages = beancounters.get("swappages")
        diskspace = r.get("DISKSPACE", parse_diskspace, None)
        return cls(
            hostname=r.get("HOSTNAME", parse_hostname, None),
            name=r.get("NAME", parse_name, None),
            description=r.get("DESCRIPTION", parse_description, None),
            ostemplate=r.get("OSTEMPLATE", parse_ostemplate, None),
            origin_sample=r.get("ORIGIN_SAMPLE", str.strip, None),
            ve_root=r.get("VE_ROOT", str, None),
            ve_private=r.get("VE_PRIVATE", str, None),
            ip_addresses=r.get("IP_ADDRESS", lambda t: tuple(parse_ip_address(a) for a in t.split()), ()),
            nameservers=r.get("NAMESERVER", _stored_list(parse_ip), ()),
            searchdomains=r.get("SEARCHDOMAIN", _stored_list(parse_domain), ()),
            netifs=r.get("NETIF", lambda t: tuple(_parse_netifs(t, "NETIF")), ()),
            netfilter=r.get("NETFILTER", parse_netfilter, "stateless"),
            onboot=r.get("ONBOOT", parse_bool, False),
            disabled=r.get("DISABLED", parse_bool, False),
            bootorder=r.get("BOOTORDER", lambda t: parse_int(t, 0, MAX_INT32), None),
            stop_timeout=r.get("STOP_TIMEOUT", lambda t: parse_int(t, 1, 3600), DEFAULT_STOP_TIMEOUT),
            cpuunits=r.get("CPUUNITS", lambda t: parse_int(t, 8, 500_000), None),
            cpulimit_percent=r.get("CPULIMIT", parse_cpulimit, 0),
            cpus=r.get("CPUS", parse_cpus, None),
            cpumask=r.get("CPUMASK", parse_cpu_list, None),
            nodemask=r.get("NODEMASK", parse_cpu_list, None),
            ioprio=r.get("IOPRIO", lambda t: parse_int(t, 0, 7), None),
            iolimit_bytes=r.get("IOLIMIT", _parse_stored_iolimit, 0),
            iopslimit=r.get("IOPSLIMIT", lambda t: parse_int(t, 0, MAX_INT32), 0),
            ram_bytes=physpages[1] if physpages is not None else None,
            swap_bytes=swappages[1] if swappages is not None else None,
            numproc=beancounters.get("numproc"),
            beancounters=beancounters,
            diskspace_bytes=None if diskspace is None else (_mul(diskspace[0], KIB), _mul(diskspace[1], KIB)),
            diskinodes=r.get("DISKINODES", lambda t: parse_barrier_limit(t, 1, suffixes=False), None),
            quotatime=r.get("QUOTATIME", lambda t: parse_int(t, 0, MAX_INT32), None),
            quotaugidlimit=r.get("QUOTAUGIDLIMIT", lambda t: parse_int(t, 0, MAX_INT32), None),
            capabilities=r.get("CAPABILITY", lambda t: _stored_switches(t, parse_capability), {}),
            features=r.get("FEATURES", lambda t: _stored_switches(t, parse_feature), {}),
            devnodes=r.get("DEVNODES", lambda t: dict(parse_devnode(d) for d in t.split()), {}),
        )

    @classmethod
    def from_file(cls, conf: ConfFile) -> ContainerConfig:
        """`from_conf` of a loaded ConfFile, naming its path and lines in errors."""
        return cls.from_conf(conf, conf.path, line_of=conf.line_of)


def _pair_parser(kind: ParamKind) -> Callable[[str], BarrierLimit]:
    unit = PAGE_SIZE if kind is ParamKind.PAGES else 1

    def parse(text: str) -> BarrierLimit:
        return parse_barrier_limit(text, unit, suffixes=kind is not ParamKind.COUNT)

    return parse


def _mul(value: int | None, unit: int) -> int | None:
    return None if value is None else value * unit


def _stored_list(check: Callable[[str], str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        return tuple(t if t.lower() == "inherit" else check(t) for t in text.split())

    return parse


def _stored_switches(text: str, parse: Callable[[str], tuple[str, bool]]) -> dict[str, bool]:
    return dict(parse(t) for t in text.split())


class _Reader:
    """Reads stored values, turning a ParamError into a ConfigError that names file, line and key."""

    def __init__(self, values: Mapping[str, str], path: str, line_of: Callable[[str], int | None] | None):
        self.values = values
        self.path = path
        self.line_of = line_of

    def get(self, key: str, parse: Callable[[str], _T], default: _T) -> _T:
        raw = self.values.get(key)
        if raw is None or not raw.strip():
            return default
        try:
            return parse(raw)
        except ParamError as e:
            line = self.line_of(key) if self.line_of is not None else None
            raise ConfigError(self.path, line, key, f"invalid value {raw!r}: {e.reason}") from None
