"""Sample container configs (``ve-<name>.conf-sample``) and the default global ``vz.conf``.

`vzctl create --config NAME` starts a container's config from the sample NAME. Samples are looked up
first in the node's config directory (``/etc/vz/conf``), so admins can add or override their own, then
among the samples shipped in this package (``basic``, ``unlimited``), read with importlib.resources.
"""

from __future__ import annotations

import os
import re
from importlib import resources

from agent.config.conffile import ConfFile, ConfigError

__all__ = [
    "SAMPLE_PREFIX",
    "SAMPLE_SUFFIX",
    "SampleNotFoundError",
    "available_samples",
    "default_vz_conf",
    "load_sample",
    "sample_file_name",
    "sample_text",
]

SAMPLE_PREFIX = "ve-"
SAMPLE_SUFFIX = ".conf-sample"
_PACKAGE = "agent.config"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

_DEFAULT_VZ_CONF = """\
## Global configuration of the vzfleet node agent (OpenVZ vz.conf syntax).
## Container configs are conf/CTID.conf beside this file; samples are conf/ve-<name>.conf-sample.

## Logging parameters
LOGGING=yes
LOGFILE=/var/log/vzctl.log
LOG_LEVEL=0
VERBOSE=0

## Disk quota parameters
DISK_QUOTA=yes

## Template parameters
TEMPLATE=/var/lib/vz/template

## Defaults for containers ($VEID is the container's CTID)
VE_ROOT=/var/lib/vz/root/$VEID
VE_PRIVATE=/var/lib/vz/private/$VEID
DUMPDIR=/var/lib/vz/dump
CONFIGFILE="basic"
DEF_OSTEMPLATE="busybox"
## Seconds a clean stop may take before the container is killed (STOP_TIMEOUT in CTID.conf wins)
VE_STOP_TIMEOUT=60

## CPU weight of the node itself (CT0), compared with the containers' CPUUNITS
VE0CPUUNITS=1000

## Networking: devices to publish containers' addresses on (detect = the default route's device)
NEIGHBOUR_DEVS=detect
IPV6="yes"
"""


class SampleNotFoundError(ConfigError):
    """No sample config of that name; the reason lists the available ones."""


def default_vz_conf() -> str:
    """The text of a fresh node's vz.conf (parses with `ConfFile.parse`)."""
    return _DEFAULT_VZ_CONF


def _sample_name(name: str) -> str:
    """``basic`` from ``basic`` or ``ve-basic.conf-sample``; refuses anything that could be a path."""
    short = name.strip()
    if short.startswith(SAMPLE_PREFIX) and short.endswith(SAMPLE_SUFFIX):
        short = short[len(SAMPLE_PREFIX) : -len(SAMPLE_SUFFIX)]
    if not _NAME_RE.fullmatch(short):
        raise ConfigError(
            f"{SAMPLE_PREFIX}{short}{SAMPLE_SUFFIX}",
            None,
            None,
            f"invalid sample name {name!r}: use letters, digits, '.', '_' or '-'",
        )
    return short


def sample_file_name(name: str) -> str:
    """``ve-<name>.conf-sample``."""
    return f"{SAMPLE_PREFIX}{_sample_name(name)}{SAMPLE_SUFFIX}"


def _names_in(entries: list[str]) -> set[str]:
    names = set()
    for entry in entries:
        if entry.startswith(SAMPLE_PREFIX) and entry.endswith(SAMPLE_SUFFIX):
            short = entry[len(SAMPLE_PREFIX) : -len(SAMPLE_SUFFIX)]
            if _NAME_RE.fullmatch(short):
                names.add(short)
    return names


def available_samples(conf_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Sorted names of the samples in `conf_dir` (if given and present) and the built-in ones."""
    names = _names_in([entry.name for entry in resources.files(_PACKAGE).iterdir()])
    if conf_dir is not None:
        try:
            names |= _names_in(os.listdir(conf_dir))
        except FileNotFoundError:
            pass
    return sorted(names)


def _read_sample(name: str, conf_dir: str | os.PathLike[str] | None) -> tuple[str, str]:
    """(text, where it came from) of the sample `name`."""
    short = _sample_name(name)
    file_name = f"{SAMPLE_PREFIX}{short}{SAMPLE_SUFFIX}"
    if conf_dir is not None:
        path = os.path.join(os.fspath(conf_dir), file_name)
        try:
            with open(path, "rb") as f:
                return f.read().decode(_ENCODING, _ERRORS), path
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        except OSError as e:
            raise ConfigError(path, None, None, f"cannot read the sample: {e.strerror}") from None
    builtin = resources.files(_PACKAGE).joinpath(file_name)
    if builtin.is_file():
        return builtin.read_bytes().decode(_ENCODING, _ERRORS), f"<built-in {file_name}>"
    where = (
        f"{os.fspath(conf_dir)} and the built-in samples" if conf_dir is not None else "the built-in samples"
    )
    available = ", ".join(available_samples(conf_dir)) or "none"
    shown = os.path.join(os.fspath(conf_dir), file_name) if conf_dir is not None else file_name
    raise SampleNotFoundError(
        shown, None, None, f"no sample config {short!r} (looked in {where}; available: {available})"
    )


def sample_text(name: str, conf_dir: str | os.PathLike[str] | None = None) -> str:
    """The text of sample `name` (``basic`` or ``ve-basic.conf-sample``).

    `conf_dir/ve-<name>.conf-sample` wins over the built-in sample of the same name. Raises
    SampleNotFoundError, listing the available samples, when there is none.
    """
    return _read_sample(name, conf_dir)[0]


def load_sample(name: str, conf_dir: str | os.PathLike[str] | None = None) -> ConfFile:
    """Sample `name` parsed, its path naming where it was found (for error messages)."""
    text, where = _read_sample(name, conf_dir)
    return ConfFile.parse(text, where)
