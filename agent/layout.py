"""Where a node keeps things: OpenVZ's layout under a configurable root.

Production uses root "/" (configs in /etc/vz/conf, data in /var/lib/vz, runtime state in
/run/vzfleet). Tests and the simulated nodes of a local cluster use their own root directory, node
name, netns prefix and cgroup parent so that several agents can share one machine.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
CTID_MIN = 101
CTID_MAX = 2_147_483_647


def default_node_name() -> str:
    name = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]", "-", name).strip("-")[:32]
    return name if NODE_NAME_RE.match(name) else "node"


def check_node_name(name: str) -> str:
    if not NODE_NAME_RE.match(name):
        raise ValueError(f"invalid node name {name!r}: use 1-32 of a-z, 0-9 and '-'")
    return name


@dataclass(frozen=True)
class NodeLayout:
    node: str
    root: Path

    @classmethod
    def at(cls, root: Path | str = "/", node: str | None = None) -> NodeLayout:
        return cls(node=check_node_name(node or default_node_name()), root=Path(root).resolve())

    def _p(self, rel: str) -> Path:
        return self.root / rel

    # OpenVZ's configuration and data layout
    @property
    def etc_dir(self) -> Path:
        return self._p("etc/vz")

    @property
    def vz_conf(self) -> Path:
        return self.etc_dir / "vz.conf"

    @property
    def conf_dir(self) -> Path:
        return self.etc_dir / "conf"

    @property
    def vz_dir(self) -> Path:
        return self._p("var/lib/vz")

    @property
    def private_dir(self) -> Path:
        return self.vz_dir / "private"

    @property
    def ve_root_dir(self) -> Path:
        return self.vz_dir / "root"

    @property
    def template_cache(self) -> Path:
        return self.vz_dir / "template" / "cache"

    @property
    def dump_dir(self) -> Path:
        return self.vz_dir / "dump"

    # runtime state, gone after a reboot
    @property
    def run_dir(self) -> Path:
        return self._p("run/vzfleet")

    @property
    def runc_root(self) -> Path:
        return self.run_dir / "runc"

    @property
    def bundle_dir(self) -> Path:
        return self.run_dir / "bundles"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "agent.pid"

    @property
    def log_file(self) -> Path:
        return self._p("var/log/vzfleet/agent.log")

    # names in machine-wide namespaces: must not clash between nodes on one machine
    @property
    def cgroup_parent(self) -> str:
        return f"/vzfleet/{self.node}"

    def netns_name(self, ctid: int) -> str:
        return f"vz-{self.node}-{ctid}"

    def conf_file(self, ctid: int) -> Path:
        return self.conf_dir / f"{ctid}.conf"

    def private(self, ctid: int) -> Path:
        return self.private_dir / str(ctid)

    def ve_root(self, ctid: int) -> Path:
        return self.ve_root_dir / str(ctid)

    def bundle(self, ctid: int) -> Path:
        return self.bundle_dir / str(ctid)

    def cgroup_path(self, ctid: int) -> str:
        return f"{self.cgroup_parent}/{ctid}"

    def make_dirs(self) -> None:
        for d in (self.conf_dir, self.private_dir, self.ve_root_dir, self.template_cache,
                  self.dump_dir, self.runc_root, self.bundle_dir, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
