#!/usr/bin/env bash
# install-system.sh — install the Debian packages vzfleet needs, then a working CRIU (>= 4.2).
#
# Idempotent and cheap to re-run: installed packages are checked with dpkg-query first, and
# `apt-get update` / `apt-get install` run only when something is missing.
#
# Output contract (same as install-criu.sh, which it calls last): the last line of stdout is
# the absolute path of the criu binary to use; all messages go to stderr.
set -euo pipefail

log() { printf 'install-system: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages)"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Runtime packages of the product and its tests.
REQUIRED=(runc rsync iptables nftables zstd busybox-static iproute2 etcd-server util-linux procps
    python3-venv python3-dev e2fsprogs)
# CRIU build dependencies (ENVIRONMENT.md, "CRIU — use 4.2.1 or newer"); install-criu.sh builds
# CRIU 4.2.x from source when the machine has no usable criu. xz-utils unpacks the source.
REQUIRED+=(build-essential pkg-config libbsd-dev libcap-dev libgnutls28-dev libnet1-dev
    libnftables-dev libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler
    protobuf-compiler uuid-dev xz-utils)
# Nice to have: builds Debian OS templates. Its absence must not fail the install.
OPTIONAL=(mmdebstrap)

# True if package $1 is installed (not just known / removed with config files left).
installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# True if apt's current package lists offer an installation candidate for $1.
available() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

# One dpkg-query call for all packages (one call per package costs ~10 ms each).
declare -A status=()
while read -r name st; do
    status[$name]=$st
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${REQUIRED[@]}" "${OPTIONAL[@]}" 2>/dev/null || true)
missing_required=()
missing_optional=()
for p in "${REQUIRED[@]}"; do [ "${status[$p]:-}" = installed ] || missing_required+=("$p"); done
for p in "${OPTIONAL[@]}"; do [ "${status[$p]:-}" = installed ] || missing_optional+=("$p"); done

export DEBIAN_FRONTEND=noninteractive
updated=0
if [ "${#missing_required[@]}" -gt 0 ]; then
    log "refreshing the apt package index (missing: ${missing_required[*]})"
    apt-get -q update >&2
    updated=1
    log "installing: ${missing_required[*]}"
    apt-get -q install -y --no-install-recommends "${missing_required[@]}" >&2
fi

# Optional packages: install when apt offers them. If the current index does not know one, refresh
# the index once (remembered in a marker file): an optional package that cannot be installed on
# this machine must not make every later run slow with an `apt-get update`.
OPTIONAL_MARKER=/var/cache/vzfleet/optional-packages-index-refreshed
for p in "${missing_optional[@]}"; do
    if ! available "$p" && [ "$updated" -eq 0 ] && [ ! -e "$OPTIONAL_MARKER" ]; then
        log "refreshing the apt package index (optional: $p)"
        if apt-get -q update >&2; then updated=1; fi
        mkdir -p "${OPTIONAL_MARKER%/*}" && : >"$OPTIONAL_MARKER"
    fi
    if available "$p" && apt-get -q install -y --no-install-recommends "$p" >&2; then
        log "installed optional package $p"
    else
        log "WARNING: optional package $p could not be installed; continuing without it"
    fi
done

if [ "${#missing_required[@]}" -eq 0 ] && [ "${#missing_optional[@]}" -eq 0 ]; then
    log "all Debian packages are installed"
fi

# The etcd-server package enables (and under systemd starts) a system etcd service on the
# default ports. vzfleet runs its own etcd with its own data dir, so the system one must not
# run. Checked on every run (cheap) so the state stays right even if someone re-enables it.
if installed etcd-server && command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        # systemd is PID 1: stop and disable.
        if systemctl is-enabled --quiet etcd.service 2>/dev/null ||
            systemctl is-active --quiet etcd.service 2>/dev/null; then
            log "stopping and disabling the system etcd service (vzfleet runs its own etcd)"
            systemctl disable --now etcd.service >&2 || log "WARNING: could not disable etcd.service"
        fi
    elif systemctl is-enabled --quiet etcd.service 2>/dev/null; then
        # No running systemd (container, chroot, other init): systemctl can still edit the
        # enablement symlinks offline, so the service stays off after a later boot.
        log "disabling the system etcd service (systemd is not running; offline disable)"
        systemctl disable etcd.service >&2 ||
            log "WARNING: could not disable etcd.service offline; ignoring"
    fi
fi
# Without systemd, the package's SysV init script may have started etcd. Stop only that
# instance (identified by the init script's pid file), never other etcd processes.
if [ ! -d /run/systemd/system ] && [ -x /etc/init.d/etcd ] && [ -s /run/etcd.pid ] &&
    kill -0 "$(cat /run/etcd.pid)" 2>/dev/null; then
    log "stopping the SysV-started system etcd (pid $(cat /run/etcd.pid))"
    /etc/init.d/etcd stop >&2 || log "WARNING: /etc/init.d/etcd stop failed"
fi

# CRIU >= 4.2 (builds it from source if needed). Its stdout (the criu path) is ours.
exec bash "$SCRIPT_DIR/install-criu.sh"
