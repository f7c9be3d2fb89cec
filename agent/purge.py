"""Tear a node's runtime state down: every container killed, nothing left on the machine.

Used by `vzfleet down` for local clusters and by the test harness, also after a crash (it works
from what is on disk and in the kernel, not from a running agent). Configs and private areas stay.
"""

from __future__ import annotations

import logging
import shutil
import signal

from agent import cgroups, mounts
from agent.layout import NodeLayout
from agent.network import netns
from agent.runtime.runc import Runc
from agent.storage import quota

log = logging.getLogger(__name__)


async def purge_node(layout: NodeLayout) -> list[str]:
    """Idempotent; returns a line per thing removed."""
    done: list[str] = []
    runc = Runc(layout.runc_root)
    for cid, st in (await runc.list_states()).items():
        if st.status in ("running", "paused", "created"):
            if st.status == "paused":
                await runc.resume(int(cid))
            await runc.kill(int(cid), signal.SIGKILL, all_processes=True)
        await runc.delete(int(cid), force=True)
        done.append(f"container {cid} killed")
    for name in netns.list_names(f"vz-{layout.node}-"):
        await netns.remove(name)
        done.append(f"netns {name} removed")
    root_prefix = str(layout.ve_root_dir) + "/"
    for _ in range(8):  # a path can be mounted several times over: unmount until none is left
        ours = sorted((mp for mp in mounts.mount_points() if mp.startswith(root_prefix)), key=len, reverse=True)
        if not ours:
            break
        for mp in ours:
            await mounts.unmount(layout.ve_root_dir / mp[len(root_prefix):])
            done.append(f"unmounted {mp}")
    done += await quota.purge(layout)  # disk images: unmounted, loop devices detached (images stay)
    cgroups.remove_tree(layout.cgroup_parent)
    cgroups.remove_if_empty("/vzfleet")
    shutil.rmtree(layout.bundle_dir, ignore_errors=True)
    return done
