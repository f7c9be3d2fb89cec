"""vzlist fields the agent renders for each container: name -> text ("-" when empty)."""

from __future__ import annotations

from agent import beancounters
from agent.beancounters import LONG_MAX, RESOURCES, Baseline, Beancounter
from agent.containers import Info

FIELD_HELP: dict[str, str] = {
    "ctid": "container ID",
    "name": "container name (--name)",
    "hostname": "host name",
    "ip": "IP addresses",
    "status": "running, stopped or suspended",
    "mounted": "whether the private area is mounted on the root",
    "ostemplate": "OS template the container was created from",
    "private": "private area path",
    "root": "root mount path",
    "description": "description",
    "onboot": "start at node boot (yes/no)",
    "bootorder": "boot order",
    "disabled": "start disabled (yes/no)",
    "numproc": "number of processes",
    "uptime": "time since the container's init started",
    "initpid": "host PID of the container's init",
    "cpuunits": "CPU weight (cpuunits)",
    "cpulimit": "CPU limit in % of one CPU (0 = none)",
    "cpus": "number of CPUs the container may use",
    "node": "hardware node the container is on",
}
_UNIT_WORDS = {"pages": "in 4 KiB pages", "bytes": "in bytes", "count": "a count"}
# every beancounter: NAME = held, NAME.m maxheld, NAME.b barrier, NAME.l limit, NAME.f failcnt
for _name, _unit in RESOURCES:
    _what = "number of tasks (processes and threads)" if _name == "numproc" else _name
    FIELD_HELP[_name] = f"{_what}: held ({_UNIT_WORDS[_unit]}; beancounter, see vzubc)"
    FIELD_HELP[f"{_name}.m"] = f"{_name}: maximum held"
    FIELD_HELP[f"{_name}.b"] = f"{_name}: barrier"
    FIELD_HELP[f"{_name}.l"] = f"{_name}: limit"
    FIELD_HELP[f"{_name}.f"] = f"{_name}: fail counter (since start or --reset_ub)"


def _fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _yn(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _amount(value: int | None) -> str:
    return "unlimited" if value is None or value >= LONG_MAX else str(value)


def beancounter_fields(rows: list[Beancounter], running: bool) -> dict[str, str]:
    """NAME, NAME.m, NAME.b, NAME.l, NAME.f of every beancounter; usage is "-" when not running."""
    out: dict[str, str] = {}
    for b in rows:
        out[b.resource] = str(b.held) if running else "-"
        out[f"{b.resource}.m"] = str(b.maxheld) if running else "-"
        out[f"{b.resource}.b"] = _amount(b.barrier)
        out[f"{b.resource}.l"] = _amount(b.limit)
        out[f"{b.resource}.f"] = str(b.failcnt) if running else "-"
    return out


def _beancounters(info: Info, node: str) -> dict[str, str]:
    running = info.status != "stopped" and info.init_pid > 0
    acct = beancounters.for_node(node)
    if acct is not None:
        try:
            rows = acct.beancounters(info.ctid, info.config, info.init_pid if running else 0)
        except OSError:  # a container stopping under our feet: show its limits only
            rows, running = beancounters.compute(info.config, None, None, Baseline())[0], False
    else:
        rows, running = beancounters.compute(info.config, None, None, Baseline())[0], False
    return beancounter_fields(rows, running)


def render_fields(info: Info, node: str) -> dict[str, str]:
    cfg = info.config
    raw: dict[str, str | None] = {
        "ctid": str(info.ctid),
        "name": cfg.name,
        "hostname": cfg.hostname,
        "ip": " ".join(cfg.ip_addresses),
        "status": info.status,
        "mounted": _yn(info.mounted),
        "ostemplate": cfg.ostemplate,
        "private": cfg.ve_private,
        "root": cfg.ve_root,
        "description": cfg.description,
        "onboot": _yn(cfg.onboot),
        "bootorder": None if cfg.bootorder is None else str(cfg.bootorder),
        "disabled": _yn(cfg.disabled),
        "numproc": str(info.nproc),
        "uptime": _fmt_uptime(info.uptime),
        "initpid": str(info.init_pid) if info.init_pid else None,
        "cpuunits": None if cfg.cpuunits is None else str(cfg.cpuunits),
        "cpulimit": None if cfg.cpulimit_percent is None else str(cfg.cpulimit_percent),
        "cpus": None if cfg.cpus is None else str(cfg.cpus),
        "node": node,
    }
    out = {k: (v if v else "-") for k, v in raw.items()}
    bc = _beancounters(info, node)
    if bc.get("numproc", "-") == "-":
        bc["numproc"] = out["numproc"]  # not running (or no accounting): the process count
    out.update(bc)
    return out
