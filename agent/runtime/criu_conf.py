"""CRIU's options file of a container, and the options a set of images was dumped with.

runc reads CRIU options it has no flag for from the file named by the container's
`org.criu.config` annotation, at checkpoint and at restore time. A restore must use the options
the images were dumped with (a dump without cgroup properties cannot be restored by a CRIU that
expects them), which may not be this agent's: images made by another version of the agent (a
migration during a rolling upgrade, an old dump file). So the options travel beside the images,
and the restoring side checks them against the few it knows.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import Kind, VzError

# - skip-in-flight: a connection waiting in a listen backlog must not fail the dump (runc notes)
# - network-lock skip: dumps and restores run with the container's node-side links down
#   (NodeNetwork.lock); CRIU's iptables lock would cost ~60 ms each way and guard nothing more
# - manage-cgroups=ignore: `runc restore` creates the container's cgroups with their limits and
#   moves CRIU into them, so the restored tasks land there; CRIU's own property dump and restore
#   cost ~20 ms (docs/decisions/0004-migration.md, "Frozen window")
CURRENT = "skip-in-flight\nnetwork-lock skip\nmanage-cgroups=ignore\n"
# what every image set without an options file was dumped with (agents before 2026-11-30)
LEGACY = "skip-in-flight\n"
IMAGE_FILE = "vzfleet-criu.conf"  # in the image directory, beside CRIU's own files
LEAVE_STOPPED = "leave-stopped\n"  # added by a migration's destination for its restore only

_KNOWN = frozenset({"skip-in-flight", "network-lock skip", "network-lock iptables", "network-lock nftables",
                    "manage-cgroups", "manage-cgroups=soft", "manage-cgroups=ignore"})
_MAX_BYTES = 4096


def validate(text: str, where: str) -> str:
    """The options in text, normalised, if every line is one this agent knows; else INVALID."""
    if len(text) > _MAX_BYTES:
        raise VzError(Kind.INVALID, f"{where}: CRIU options file too large")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line not in _KNOWN:
            raise VzError(Kind.INVALID, f"{where}: unexpected CRIU option {line!r}")
    return "".join(f"{line}\n" for line in lines)


def record(conf_file: Path, image_dir: Path) -> None:
    """Put the options the images in image_dir were just dumped with beside them."""
    (image_dir / IMAGE_FILE).write_text(conf_file.read_text())


def for_restore(image_dir: Path) -> str:
    """The options to restore image_dir with (taken out of it: CRIU need not see the file)."""
    carried = image_dir / IMAGE_FILE
    try:
        text = carried.read_text()
    except FileNotFoundError:
        return LEGACY
    except (OSError, UnicodeDecodeError) as e:
        raise VzError(Kind.INVALID, f"cannot read the CRIU options of the images: {e}") from None
    options = validate(text, "the images' CRIU options")
    carried.unlink()
    return options
