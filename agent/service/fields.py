"""vzlist fields the agent renders for each container: name -> text ("-" when empty)."""

from __future__ import annotations

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
    return {k: (v if v else "-") for k, v in raw.items()}
