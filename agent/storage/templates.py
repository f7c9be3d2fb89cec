"""The OS-template cache of a node: tar archives of root file systems, one per template name.

A template is ``<cache_dir>/<name>.tar.{zst,gz,xz}`` (or ``.tar``). Nothing enters the cache half
made: imports are validated by a full safe extraction first, builds happen in a temporary directory
inside the cache dir, and every file is renamed into place only when complete. Names that start with
"." are work in progress and are never listed.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.storage.archive import (
    COMPRESSION_SUFFIXES,
    ArchiveError,
    Limits,
    UnsafePathError,
    create_archive,
    detect_compression,
    extract_archive,
    open_beneath,
)

#: Suffixes recognised in the cache, most preferred first (".tar.zstd" is read, never written).
TEMPLATE_SUFFIXES: tuple[str, ...] = (".tar.zst", ".tar.zstd", ".tar.gz", ".tar.xz", ".tar")
METADATA_FILE = "etc/vzfleet-template"
BUSYBOX_CANDIDATES: tuple[Path, ...] = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES: tuple[str, ...] = ("sysvinit-core", "procps", "iproute2", "ifupdown", "netbase", "iputils-ping")
DEBIAN_BUILD_TIMEOUT = 1800.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_METADATA_MAX_BYTES = 64 * 1024
_PT_INTERP = 3


class TemplateError(Exception):
    """Base of the template cache's errors; the message says what to do next."""


class TemplateNotFound(TemplateError):
    def __init__(self, name: str, available: Sequence[str]) -> None:
        self.name = name
        self.available = list(available)
        have = ", ".join(available) if available else "none"
        super().__init__(
            f"template {name!r} not found; available templates: {have}. "
            "Build one with `vzfleet template build busybox` or import an archive."
        )


class InvalidTemplateName(TemplateError, ValueError):
    """A template name that is not one safe path component (also a ValueError)."""


class TemplateImportError(TemplateError, ArchiveError):
    """An archive was refused or unreadable; the cache is unchanged.

    Also an :class:`ArchiveError`, so callers that handle archive refusals catch it too;
    ``__cause__`` is the original error and ``member`` names the refused member, if any.
    """

    def __init__(self, message: str, member: str | None = None) -> None:
        ArchiveError.__init__(self, message)
        self.member = member


class TemplateBuildError(TemplateError):
    """A template build failed; the cache is unchanged."""


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    path: Path
    size: int
    mtime: float


def template_name_of(filename: str) -> str | None:
    """``"debian-12.tar.zst"`` -> ``"debian-12"``; None when the suffix is not a template suffix."""
    for suffix in TEMPLATE_SUFFIXES:
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def check_template_name(name: str) -> None:
    """Template names are one path component: letters, digits, and ``._+-`` after the first."""
    if not _NAME_RE.match(name):
        raise InvalidTemplateName(
            f"invalid template name {name!r}: use letters, digits and ._+- (not first), at most 128"
        )


# --------------------------------------------------------------------------------------------------
# Metadata


def parse_metadata(text: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and '#' comments skipped, one level of quotes removed."""
    result: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key:
            result[key] = value
    return result


def template_metadata(rootfs: Path) -> dict[str, str]:
    """Read ``/etc/vzfleet-template`` of an extracted rootfs; {} when it has none.

    The file is opened by a walk that never follows a symlink (a template is untrusted input), and
    must be a regular file of at most 64 KiB; otherwise :class:`TemplateError`.
    """
    try:
        fd = open_beneath(rootfs, METADATA_FILE, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except UnsafePathError as exc:
        raise TemplateError(f"{rootfs}/{METADATA_FILE} not read: {exc.component!r} {exc.why}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TemplateError(f"{rootfs}/{METADATA_FILE} is not a regular file")
        data = f.read(_METADATA_MAX_BYTES + 1)
    if len(data) > _METADATA_MAX_BYTES:
        raise TemplateError(f"{rootfs}/{METADATA_FILE} is larger than {_METADATA_MAX_BYTES} bytes")
    return parse_metadata(data.decode("utf-8", "replace"))


def _write_beneath(rootfs: Path, relpath: str, content: str, mode: int = 0o644) -> None:
    fd = open_beneath(rootfs, relpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode())
        os.fchmod(fd, mode)


def _read_beneath(rootfs: Path, relpath: str) -> str:
    fd = open_beneath(rootfs, relpath, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        return f.read().decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------
# Host discovery: static busybox, Debian mirror


def elf_is_static(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header (no dynamic loader).

    Raises ValueError for a file that is not ELF.
    """
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise ValueError(f"{path} is not an ELF file")
        is64 = ident[4] == 2
        order = "<" if ident[5] == 1 else ">"
        header = f.read(48 if is64 else 36)
        # e_phoff, e_phentsize, e_phnum of the ELF header that follows e_ident
        layout = "16xQ14xHH" if is64 else "12xI10xHH"
        phoff, phentsize, phnum = struct.unpack_from(order + layout, header)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            entry = f.read(4)
            if len(entry) < 4:
                raise ValueError(f"{path}: truncated program header table")
            (p_type,) = struct.unpack(order + "I", entry)
            if p_type == _PT_INTERP:
                return False
    return True


def find_static_busybox(candidates: Sequence[Path] = BUSYBOX_CANDIDATES) -> Path | None:
    """The first statically linked busybox (Debian's busybox-static package), or None."""
    for candidate in candidates:
        try:
            if candidate.is_file() and elf_is_static(candidate):
                return candidate
        except (OSError, ValueError):
            continue
    return None


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and key:
            current[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _is_main_archive(uri: str, suites: Sequence[str]) -> bool:
    return "security" not in uri and any(not s.endswith(("-security", "-updates", "-backports")) for s in suites)


def debian_mirror_from_apt(apt_dir: Path = Path("/etc/apt")) -> str | None:
    """The Debian archive URI this machine's apt uses (deb822 ``*.sources`` first, then
    ``sources.list`` style files); security, updates and backports entries are skipped."""
    sources_d = apt_dir / "sources.list.d"
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for stanza in _deb822_stanzas(text):
            if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes").lower() == "no":
                continue
            suites = stanza.get("suites", "").split()
            for uri in stanza.get("uris", "").split():
                if _is_main_archive(uri, suites):
                    return uri
    lists = [apt_dir / "sources.list"]
    if sources_d.is_dir():
        lists += sorted(sources_d.glob("*.list"))
    for path in lists:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and _is_main_archive(words[1], [words[2]]):
                return words[1]
    return None


def _run(cmd: Sequence[str], timeout: float, what: str) -> str:
    """Run a build command; raise TemplateBuildError naming it with the tail of its stderr."""
    shown = " ".join(cmd)
    try:
        done = subprocess.run(list(cmd), capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise TemplateBuildError(f"{what}: `{shown}` failed: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise TemplateBuildError(f"{what}: `{shown}` did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.decode("utf-8", "replace").strip().splitlines()[-20:])
        raise TemplateBuildError(f"{what}: `{shown}` exited with {done.returncode}:\n{tail}")
    return done.stdout.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------
# Rootfs contents


BUSYBOX_INITTAB = """\
# vzfleet busybox template. No getty or askfirst lines: a container has no console.
::sysinit:/etc/init.d/rcS
::shutdown:/bin/umount -a -r
"""

BUSYBOX_RCS = """\
#!/bin/sh
# vzfleet busybox template. The runtime sets up /proc, /sys and /dev; nothing is mounted here.
[ -s /etc/hostname ] && /bin/hostname -F /etc/hostname
exit 0
"""

_BUSYBOX_DIRS: tuple[tuple[str, int], ...] = (
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("etc/init.d", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("dev/pts", 0o755),
    ("dev/shm", 0o1777),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("var", 0o755),
    ("var/log", 0o755),
    ("var/run", 0o755),
    ("run", 0o755),
    ("www", 0o755),
)


def _metadata_text(values: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


def populate_busybox_rootfs(rootfs: Path, busybox: Path, name: str) -> None:
    """Fill the empty directory ``rootfs`` with a minimal busybox system (busybox init as /sbin/init)."""
    for rel, mode in _BUSYBOX_DIRS:
        (rootfs / rel).mkdir(exist_ok=True)
        os.chmod(rootfs / rel, mode)  # explicit: independent of the umask
    os.chmod(rootfs, 0o755)
    shutil.copyfile(busybox, rootfs / "bin/busybox")
    os.chmod(rootfs / "bin/busybox", 0o755)
    applets = _run([str(busybox), "--list-full"], 30, "listing busybox applets").split()
    for rel in [*applets, "sbin/init", "sbin/halt", "sbin/poweroff", "sbin/reboot"]:
        parts = Path(rel).parts
        if rel == "bin/busybox" or not parts or Path(rel).is_absolute() or ".." in parts:
            continue
        link = rootfs / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to("/bin/busybox")
    files: dict[str, tuple[str, int]] = {
        "etc/passwd": (
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        ),
        "etc/group": ("root:x:0:\nnogroup:x:65534:\n", 0o644),
        "etc/shadow": ("root:*::0:99999:7:::\nnobody:*::0:99999:7:::\n", 0o600),
        "etc/hostname": (f"{name}\n", 0o644),
        "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/inittab": (BUSYBOX_INITTAB, 0o644),
        "etc/init.d/rcS": (BUSYBOX_RCS, 0o755),
        METADATA_FILE: (_metadata_text({"NAME": name, "INIT": "/sbin/init"}), 0o644),
    }
    for rel, (content, mode) in files.items():
        (rootfs / rel).write_text(content)
        os.chmod(rootfs / rel, mode)


def strip_getty_lines(inittab: str) -> str:
    """Drop the getty lines of a sysvinit inittab: a container has no terminals to run them on."""
    kept = [line for line in inittab.splitlines() if line.lstrip().startswith("#") or "getty" not in line]
    return "\n".join(kept) + "\n"


def postprocess_debian_rootfs(rootfs: Path, name: str) -> None:
    """Adapt an mmdebstrap rootfs for a container: inittab without getty, template metadata, and
    a neutral /etc/hostname (mmdebstrap copies the build host's)."""
    try:
        inittab = _read_beneath(rootfs, "etc/inittab")
    except FileNotFoundError:
        raise TemplateBuildError(f"{rootfs}/etc/inittab is missing: was sysvinit-core installed?") from None
    _write_beneath(rootfs, "etc/inittab", strip_getty_lines(inittab))
    _write_beneath(rootfs, "etc/hostname", "localhost\n")
    metadata = {"NAME": name, "INIT": "/sbin/init", "DISTRIBUTION": "debian", "RELEASE": DEBIAN_SUITE}
    _write_beneath(rootfs, METADATA_FILE, _metadata_text(metadata))


# --------------------------------------------------------------------------------------------------
# The cache


class TemplateCache:
    """Templates stored as archives in ``cache_dir`` (created on first write).

    All writers are atomic per template (rename into place) and leave the cache unchanged on
    error; concurrent writers of the same name: the last rename wins.
    """

    def __init__(self, cache_dir: Path, *, limits: Limits = Limits()) -> None:  # noqa: B008
        self.cache_dir = cache_dir
        self.limits = limits

    def list(self) -> builtins.list[TemplateInfo]:
        """Templates sorted by name; for a name stored with several suffixes, the preferred one."""
        found: dict[str, tuple[int, TemplateInfo]] = {}
        try:
            entries = list(os.scandir(self.cache_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            name = template_name_of(entry.name)
            if name is None:
                continue
            rank = next(i for i, s in enumerate(TEMPLATE_SUFFIXES) if entry.name.endswith(s))
            if name in found and found[name][0] <= rank:
                continue
            st = entry.stat(follow_symlinks=False)
            found[name] = (rank, TemplateInfo(name, Path(entry.path), st.st_size, st.st_mtime))
        return [found[name][1] for name in sorted(found)]

    def find(self, name: str) -> Path:
        """The archive of template ``name``; :class:`TemplateNotFound` lists the available ones."""
        templates = self.list()
        for info in templates:
            if info.name == name:
                return info.path
        raise TemplateNotFound(name, [info.name for info in templates])

    def import_file(self, path: Path, name: str | None = None) -> TemplateInfo:
        """Copy the archive ``path`` into the cache as ``name`` (default: its file name minus suffix).

        The copy is validated by a complete safe extraction (then deleted) before it is renamed into
        place, so a refused archive (:class:`TemplateImportError`) never enters the cache. An
        existing template of that name is replaced. Needs free space for the extracted tree.
        """
        if name is None:
            name = template_name_of(path.name)
            if name is None:
                raise InvalidTemplateName(
                    f"cannot derive a template name from {path.name!r} (expected {', '.join(TEMPLATE_SUFFIXES)}); "
                    "pass a name"
                )
        check_template_name(name)
        work = self._workdir(f"import-{name}")
        try:
            staged = work / "archive"
            try:
                shutil.copyfile(path, staged)
            except OSError as exc:
                raise TemplateImportError(f"cannot read {path}: {exc.strerror or exc}") from exc
            try:
                compression = detect_compression(staged)  # of the copy we validate and keep
                extract_archive(staged, work / "rootfs", self.limits)
            except ArchiveError as exc:
                message = f"template archive {path} refused, the cache is unchanged: {exc}"
                raise TemplateImportError(message, exc.member) from exc
            return self._install(staged, name, compression)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def build_busybox(self, name: str = "busybox") -> TemplateInfo:
        """Build a ~1 MB busybox template offline from the host's static busybox, in seconds."""
        check_template_name(name)
        busybox = find_static_busybox()
        if busybox is None:
            raise TemplateBuildError(
                "no statically linked busybox at "
                f"{' or '.join(map(str, BUSYBOX_CANDIDATES))}: apt-get install busybox-static"
            )
        work = self._workdir(f"build-{name}")
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir()
            populate_busybox_rootfs(rootfs, busybox, name)
            return self._archive_and_install(rootfs, work, name, root_owner=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def build_debian(self, name: str = "debian-12-minimal", mirror: str | None = None) -> TemplateInfo:
        """Build a Debian 12 minbase template with sysvinit (mmdebstrap, needs root and the mirror).

        ``mirror`` defaults to the Debian archive of this machine's apt sources.
        """
        check_template_name(name)
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise TemplateBuildError("mmdebstrap is not installed: apt-get install mmdebstrap")
        if mirror is None:
            mirror = debian_mirror_from_apt()
            if mirror is None:
                raise TemplateBuildError("no Debian mirror found in /etc/apt sources: pass a mirror URL")
        work = self._workdir(f"build-{name}")
        try:
            rootfs = work / "rootfs"
            cmd = [
                mmdebstrap,
                "--variant=minbase",
                "--include=" + ",".join(DEBIAN_PACKAGES),
                "--format=directory",
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ]
            _run(cmd, DEBIAN_BUILD_TIMEOUT, f"building template {name!r}")
            postprocess_debian_rootfs(rootfs, name)
            return self._archive_and_install(rootfs, work, name, root_owner=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- internals ---------------------------------------------------------------------------------

    def _workdir(self, purpose: str) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{purpose}-"))

    def _archive_and_install(self, rootfs: Path, work: Path, name: str, *, root_owner: bool) -> TemplateInfo:
        archive = work / "template.tar.zst"
        try:
            create_archive(rootfs, archive, "zst", root_owner=root_owner)
        except ArchiveError as exc:
            raise TemplateBuildError(f"archiving template {name!r}: {exc}") from exc
        return self._install(archive, name, "zst")

    def _install(self, staged: Path, name: str, compression: str) -> TemplateInfo:
        """Rename a complete archive into place, then drop other-suffix variants of the name."""
        final = self.cache_dir / f"{name}{COMPRESSION_SUFFIXES[compression]}"
        os.chmod(staged, 0o644)
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staged, final)
        for suffix in TEMPLATE_SUFFIXES:
            other = self.cache_dir / f"{name}{suffix}"
            if other != final and not other.is_dir():
                other.unlink(missing_ok=True)
        st = os.stat(final)
        return TemplateInfo(name, final, st.st_size, st.st_mtime)
