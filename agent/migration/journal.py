"""One small JSON file per migration in flight, so that a restarted agent can finish or undo it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

# source states
OUT_PREPARED = "prepared"  # destination prepared; source untouched
OUT_FROZEN = "frozen"  # source frozen and its network down: must be resumed or killed
OUT_COMMIT_SENT = "commit-sent"  # Commit asked: the destination may own the container
OUT_DONE = "done"
# destination states
IN_PREPARED = "prepared"
IN_RESTORED = "restored"
IN_COMMITTED = "committed"


@dataclass
class Journal:
    id: str
    ctid: int
    direction: str  # "out" | "in"
    state: str
    peer: str = ""
    online: bool = True
    was_running: bool = True
    keep_dst: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _path(run_dir: Path, direction: str, ctid: int) -> Path:
    return run_dir / "migrations" / f"{direction}-{ctid}.json"


def save(run_dir: Path, j: Journal) -> None:
    p = _path(run_dir, j.direction, j.ctid)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(j), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def load(run_dir: Path, direction: str, ctid: int) -> Journal | None:
    try:
        data = json.loads(_path(run_dir, direction, ctid).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Journal(**data)


def remove(run_dir: Path, direction: str, ctid: int) -> None:
    _path(run_dir, direction, ctid).unlink(missing_ok=True)


def pending(run_dir: Path, direction: str) -> list[Journal]:
    d = run_dir / "migrations"
    out = []
    for p in sorted(d.glob(f"{direction}-*.json")) if d.is_dir() else []:
        try:
            out.append(Journal(**json.loads(p.read_text())))
        except (ValueError, TypeError):
            continue
    return out
