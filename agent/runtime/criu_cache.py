"""CRIU's kernel-probe cache ("kerndat"): a root-only directory on /dev/shm.

Every CRIU run first probes the kernel (~40 ms here; it even runs `iptables -L`) unless it finds
the cache file, which it writes only into a tmpfs. Upstream keeps it in /run, which is no tmpfs on
some machines (the CI machines among them), so `scripts/install-criu.sh` builds CRIU with this
directory as its RUNDIR (docs/decisions/0005-criu-kerndat-cache.md). /dev/shm is emptied at boot
like /run, and world-writable, hence the ownership check: a cache planted by another user would
mislead CRIU, so anything but root's own 0700 directory is moved aside.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

log = logging.getLogger(__name__)

KDAT_DIR = Path("/dev/shm/vzfleet-criu")  # RUNDIR in scripts/install-criu.sh


def trusted(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700


def ensure_kdat_dir(path: Path = KDAT_DIR) -> str | None:
    """Make path root's own 0700 directory; None when it is, else why it could not be made so
    (CRIU then just probes the kernel on every run)."""
    for _ in range(3):  # another agent may be doing the same at this moment
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                os.mkdir(path, 0o700)
                os.chmod(path, 0o700)  # in spite of the umask
            except FileExistsError:
                continue
            except OSError as e:
                return f"cannot create CRIU's kerndat cache directory {path}: {e}"
            continue
        if trusted(st):
            return None
        aside = path.with_name(f"{path.name}.untrusted.{os.getpid()}.{time.monotonic_ns()}")
        log.warning("%s is not a root-only directory (uid %d, mode %o): moved aside to %s",
                    path, st.st_uid, st.st_mode, aside)
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        except OSError as e:
            return f"cannot move the untrusted {path} aside: {e}"
    return f"{path} keeps changing under us; CRIU's kerndat cache stays off"
