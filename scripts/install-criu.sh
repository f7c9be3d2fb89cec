#!/usr/bin/env bash
# install-criu.sh — make sure a CRIU >= 4.2 that passes `criu check` is available.
#
# Why: Debian bookworm's criu 3.17 fails `criu check` on kernels >= 6.13 (vDSO layout) and
# criu 4.1.x cannot dump TCP/UDP sockets on kernels >= 6.16 (fixed in CRIU 4.2). See
# shared/ENVIRONMENT.md, section "CRIU — use 4.2.1 or newer".
#
# What it does:
#   1. Fast path: a criu on PATH (or /usr/local/sbin/criu) with version >= 4.2 whose `criu check`
#      passes is used as is.
#   2. Otherwise CRIU is built from Debian's source package (suite sid; upstream orig tarball only,
#      the Debian packaging is not used) against the bookworm -dev packages and installed with
#      `make install-criu PREFIX=/usr/local`. The download and the build tree are cached under
#      /var/cache/vzfleet/criu/ so a re-run does not download or rebuild.
#
# Output contract: the LAST line of stdout is the absolute path of the criu binary settled on;
# every other message goes to stderr.
# Side output: /var/cache/vzfleet/criu/PYCRIU_DIR holds the absolute path of the build tree's lib/
# directory (the one containing pycriu/) whenever such a built tree exists.
#
# Environment overrides (optional):
#   VZFLEET_CRIU_CACHE      cache directory (default /var/cache/vzfleet/criu)
#   VZFLEET_DEBIAN_MIRROR   Debian mirror to fetch the source from (default: read from apt sources)
set -euo pipefail
shopt -s inherit_errexit # errors inside $(...) stop the script too

readonly MIN_VERSION=4.2
readonly PINNED_VERSION=4.2.1
# sha256 of Debian's criu_4.2.1.orig.tar.xz (= upstream v4.2.1), verified by hand (ENVIRONMENT.md).
readonly PINNED_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
readonly PREFIX=/usr/local
readonly FALLBACK_MIRROR=http://deb.debian.org/debian
readonly CACHE_DIR=${VZFLEET_CRIU_CACHE:-/var/cache/vzfleet/criu}
readonly PYCRIU_FILE=$CACHE_DIR/PYCRIU_DIR
readonly BUILD_LOG=$CACHE_DIR/build.log
# CRIU caches its kernel probe ("kerndat", ~40 ms per run: it even runs `iptables -L`) in RUNDIR,
# only if RUNDIR is a tmpfs. Upstream's RUNDIR is /run, not a tmpfs on every machine (not on the
# CI machines), so our build keeps it in a root-only directory on /dev/shm, always a tmpfs.
# Same path as KDAT_DIR in agent/runtime/criu_cache.py, which re-creates it after a reboot.
readonly KDAT_DIR=/dev/shm/vzfleet-criu

# Build dependencies, all from bookworm main (ENVIRONMENT.md). xz-utils unpacks the .orig.tar.xz.
readonly BUILD_DEPS=(build-essential pkg-config libbsd-dev libcap-dev libgnutls28-dev libnet1-dev
    libnftables-dev libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler
    protobuf-compiler uuid-dev xz-utils)

log() { printf 'install-criu: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (criu check and the install into $PREFIX need it)"

# ---------------------------------------------------------------------------------------------
# Helpers around a criu binary
# ---------------------------------------------------------------------------------------------

# Print the version of criu binary $1 ("4.2.1"), or nothing if it does not run.
criu_version() {
    "$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n 1 || true
}

# True if criu binary $1 is >= MIN_VERSION.
version_ok() {
    local v
    v=$(criu_version "$1")
    [ -n "$v" ] && dpkg --compare-versions "$v" ge "$MIN_VERSION"
}

# True if `criu check` passes: exit code 0 AND "Looks good" in the output (warnings are fine).
# On failure the tail of its output is logged so the reason is visible.
check_ok() {
    local out rc=0
    out=$("$1" check 2>&1) || rc=$?
    if [ "$rc" -eq 0 ] && grep -q 'Looks good' <<<"$out"; then
        return 0
    fi
    log "'$1 check' failed (exit $rc):"
    tail -n 5 <<<"$out" | sed 's/^/    /' >&2
    return 1
}

# True if criu binary $1 was built by this script (keeps its kerndat cache in KDAT_DIR).
has_kdat_dir() {
    grep -qaF "$KDAT_DIR/criu.kdat" "$1"
}

# The kerndat cache directory: root's own, mode 0700 (anything else found there is moved aside:
# /dev/shm is world-writable and a planted cache would mislead CRIU).
ensure_kdat_dir() {
    if [ -L "$KDAT_DIR" ] || { [ -e "$KDAT_DIR" ] &&
        [ "$(stat -c '%F %u %a' "$KDAT_DIR")" != "directory 0 700" ]; }; then
        log "moving aside $KDAT_DIR (not a root-only directory)"
        mv -f "$KDAT_DIR" "$KDAT_DIR.untrusted.$$"
    fi
    mkdir -p -m 700 "$KDAT_DIR"
}

# Candidate binaries, in order of preference: every criu on PATH, then our own install location
# (which root's PATH may lack, e.g. under some sudo configurations). Duplicates by real path
# (/sbin -> /usr/sbin on merged-/usr systems) are dropped.
candidates() {
    local c
    { type -aP criu || true; echo "$PREFIX/sbin/criu"; } | while IFS= read -r c; do
        printf '%s\t%s\n' "$(readlink -f "$c" || echo "$c")" "$c"
    done | awk -F'\t' '!seen[$1]++ { print $2 }'
}

# Print the first usable criu (>= MIN_VERSION, check passes); fail if there is none.
find_usable_criu() {
    local c
    while IFS= read -r c; do
        [ -x "$c" ] || continue
        if ! version_ok "$c"; then
            log "ignoring $c: version '$(criu_version "$c")' < $MIN_VERSION"
            continue
        fi
        if [ "$(readlink -f "$c")" = "$PREFIX/sbin/criu" ] && ! has_kdat_dir "$c"; then
            log "ignoring $c: an earlier build of ours without the kerndat cache in $KDAT_DIR"
            continue
        fi
        if check_ok "$c"; then
            case $c in /*) ;; *) c=$(readlink -f "$c") ;; esac
            echo "$c"
            return 0
        fi
    done < <(candidates)
    return 1
}

# ---------------------------------------------------------------------------------------------
# Build tree bookkeeping (cache layout: src/ downloads, criu-<version>/ build trees, apt/ state)
# ---------------------------------------------------------------------------------------------

# True if $1 is a completed build tree: criu binary and the generated pycriu RPC module exist.
is_built() {
    [ -x "$1/criu/criu" ] && [ -f "$1/lib/pycriu/rpc_pb2.py" ]
}

# Built trees, newest version first.
built_trees() {
    local d
    for d in "$CACHE_DIR"/criu-*/; do
        d=${d%/}
        if is_built "$d"; then echo "$d"; fi
    done | sort -V -r
}

# Record the lib/ dir of the build tree matching version $1 (else the newest built tree) in
# PYCRIU_DIR, so the Python installer can use that tree's pycriu. With no built tree: remove
# a stale PYCRIU_DIR (never create one for a system criu).
record_pycriu_dir() {
    local want=$1 tree
    if [ -n "$want" ] && is_built "$CACHE_DIR/criu-$want"; then
        tree=$CACHE_DIR/criu-$want
    else
        tree=$(built_trees | head -n 1)
    fi
    if [ -z "$tree" ]; then
        if [ -e "$PYCRIU_FILE" ]; then
            log "removing stale $PYCRIU_FILE (no built CRIU tree in the cache)"
            rm -f "$PYCRIU_FILE"
        fi
        return 0
    fi
    local lib=$tree/lib
    if [ "$(cat "$PYCRIU_FILE" 2>/dev/null || true)" != "$lib" ]; then
        printf '%s\n' "$lib" >"$PYCRIU_FILE.tmp" && mv -f "$PYCRIU_FILE.tmp" "$PYCRIU_FILE"
    fi
    log "pycriu: $lib/pycriu (recorded in $PYCRIU_FILE)"
}

# Settle on binary $1: record pycriu, warn about shadowing, print the path as last stdout line.
finish() {
    local bin=$1 v first
    v=$(criu_version "$bin")
    record_pycriu_dir "$v"
    first=$(type -P criu || true)
    if [ -n "$first" ] && [ "$first" != "$bin" ]; then
        log "note: plain 'criu' on PATH is $first ($(criu_version "$first")); use $bin by absolute path"
    fi
    log "using $bin (CRIU $v)"
    echo "$bin"
    exit 0
}

# ---------------------------------------------------------------------------------------------
# Download of the source (private apt configuration: the machine's apt setup is not touched)
# ---------------------------------------------------------------------------------------------

# Debian archive mirrors from the machine's apt sources, best first, then the public fallback.
# Only URIs whose path ends in /debian count: that keeps out debian-security (no sid there) and
# third-party repositories (nodesource, google, ...).
debian_mirrors() {
    local f
    if [ -n "${VZFLEET_DEBIAN_MIRROR:-}" ]; then echo "$VZFLEET_DEBIAN_MIRROR"; fi
    {
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -r "$f" ] || continue
            # deb822: collect URIs: per stanza, skip stanzas with "Enabled: no".
            awk '
                function flush() { if (enabled && uris != "") print uris; uris = ""; enabled = 1 }
                BEGIN { enabled = 1 }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                tolower($1) == "uris:"    { $1 = ""; uris = uris " " $0; next }
                tolower($1) == "enabled:" { enabled = (tolower($2) != "no"); next }
                END { flush() }' "$f"
        done
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -r "$f" ] || continue
            # one-line format: deb [options] URI suite components...
            awk '$1 == "deb" || $1 == "deb-src" {
                    i = 2
                    if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    print $i }' "$f"
        done
    } | tr -s '[:blank:]' '\n' | grep -E '^(https?|ftp)://[^[:space:]]+/debian/?$' | sed 's#/*$##' || true
    echo "$FALLBACK_MIRROR"
}

# Orig tarballs in directory $1, newest version first.
orig_tarballs() {
    [ -d "$1" ] || return 0
    find "$1" -maxdepth 1 -type f -name 'criu_*.orig.tar.*' ! -name '*.asc' -printf '%f\n' |
        sort -V -r | sed "s#^#$1/#"
}

# Version from a tarball name: .../criu_4.2.1.orig.tar.xz -> 4.2.1
tarball_version() {
    local n=${1##*/}
    n=${n#criu_}
    echo "${n%%.orig.tar.*}"
}

# True if tarball $1 is acceptable: >= MIN_VERSION; the pinned version must match its checksum;
# a newer one (sid moved on) is accepted with its sha256 logged (apt verified it against the
# signed Sources index when it was downloaded).
tarball_ok() {
    local tb=$1 v sum
    v=$(tarball_version "$tb")
    dpkg --compare-versions "$v" ge "$MIN_VERSION" || { log "$tb: version $v < $MIN_VERSION"; return 1; }
    sum=$(sha256sum "$tb" | cut -d' ' -f1)
    if [ "$v" = "$PINNED_VERSION" ]; then
        if [ "$sum" != "$PINNED_SHA256" ]; then
            log "$tb: sha256 $sum does not match the expected $PINNED_SHA256"
            return 1
        fi
        log "$tb: sha256 OK"
    else
        log "$tb: CRIU $v (not the pinned $PINNED_VERSION), sha256 $sum"
    fi
}

# Download the newest criu orig tarball from sid into $CACHE_DIR/src; print its path.
download_source() {
    local src=$CACHE_DIR/src apt=$CACHE_DIR/apt mirror tb keyring="" dest
    mkdir -p "$src" "$apt/lists/partial" "$apt/cache/archives/partial"
    # Let apt's unprivileged download user write here (avoids the "unsandboxed" warning).
    if id _apt >/dev/null 2>&1; then chown _apt "$src" "$apt/lists/partial" || true; fi
    [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] &&
        keyring='[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] '
    # Private apt configuration: our own sources file, no sources.list.d, our own lists and cache.
    # Check-Valid-Until=false: some mirrors (CI proxies, frozen snapshots) serve a sid Release
    # whose Valid-Until has passed, and apt then refuses the whole index. The signature is still
    # checked; a replayed older index could only offer an older genuine tarball, which the
    # version check (>= 4.2) and the pinned sha256 for 4.2.1 catch.
    local -a A=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
        -o "Acquire::Check-Valid-Until=false")
    while IFS= read -r mirror; do
        log "fetching the criu source index from $mirror (sid)"
        printf 'deb-src %s%s sid main\n' "$keyring" "$mirror" >"$apt/sources.list"
        if ! apt-get "${A[@]}" -q update >&2; then
            log "apt-get update failed for $mirror"
            continue
        fi
        # The .dsc/.debian.tar.xz may 404 on some mirrors while the .orig.tar.xz arrives:
        # tolerate the failure and look at what was downloaded.
        (cd "$src" && apt-get "${A[@]}" -q source --download-only criu >&2) ||
            log "apt-get source reported errors (tolerated if the orig tarball arrived)"
        tb=$(orig_tarballs "$src" | head -n 1)
        if [ -z "$tb" ]; then
            # Last resort: the pinned upstream tarball straight from the pool, hash-checked by apt.
            dest="$src/criu_$PINNED_VERSION.orig.tar.xz"
            log "no orig tarball from apt-get source; trying the pool file directly"
            /usr/lib/apt/apt-helper download-file \
                "$mirror/pool/main/c/criu/criu_$PINNED_VERSION.orig.tar.xz" "$dest" \
                "SHA256:$PINNED_SHA256" >&2 || rm -f "$dest"
            tb=$(orig_tarballs "$src" | head -n 1)
        fi
        if [ -n "$tb" ] && tarball_ok "$tb"; then
            rm -f "$src"/criu_*.dsc "$src"/criu_*.debian.tar.* # not used: plain upstream make
            echo "$tb"
            return 0
        fi
        [ -n "$tb" ] && rm -f "$tb"
    done < <(debian_mirrors | awk '!seen[$0]++')
    return 1
}

# Unpack tarball $1 into $CACHE_DIR/criu-<version> (atomically: a half-unpacked tree never
# looks like a real one); print the tree path.
unpack_source() {
    local tb=$1 v tree tmp top
    v=$(tarball_version "$tb")
    tree=$CACHE_DIR/criu-$v
    if [ -f "$tree/Makefile" ]; then echo "$tree"; return 0; fi
    tmp=$(mktemp -d "$CACHE_DIR/unpack.XXXXXX")
    tar --no-same-owner -xf "$tb" -C "$tmp"
    top=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    if [ -z "$top" ] || [ ! -f "$top/Makefile" ]; then
        rm -rf "$tmp"
        die "unexpected layout of $tb"
    fi
    rm -rf "$tree"
    mv "$top" "$tree"
    rm -rf "$tmp"
    echo "$tree"
}

# Install the build dependencies if any is missing (install-system.sh normally did already;
# this keeps install-criu.sh usable on its own). The apt index is refreshed only if needed.
ensure_build_deps() {
    local -a missing=()
    local p
    for p in "${BUILD_DEPS[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] ||
            missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing build dependencies: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q update >&2
    apt-get -q install -y --no-install-recommends "${missing[@]}" >&2
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

ensure_kdat_dir

# 1. Fast path.
if bin=$(find_usable_criu); then
    finish "$bin"
fi

# 2. Build (or reuse a cached build). Serialise concurrent runs on the cache.
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    log "another install-criu.sh holds $CACHE_DIR/.lock; waiting"
    flock 9
    # It may have installed a usable criu meanwhile.
    if bin=$(find_usable_criu 2>/dev/null); then finish "$bin"; fi
fi

log "no usable CRIU >= $MIN_VERSION found; building CRIU from source (cache: $CACHE_DIR)"
ensure_build_deps

tree=$(built_trees | head -n 1)
if [ -n "$tree" ]; then
    log "reusing the cached build tree $tree"
else
    tb=$(orig_tarballs "$CACHE_DIR/src" | head -n 1)
    if [ -n "$tb" ] && tarball_ok "$tb"; then
        log "reusing the cached source $tb"
    else
        [ -z "$tb" ] || rm -f "$tb" # failed verification: fetch it again
        tb=$(download_source) || die "could not download a criu >= $MIN_VERSION source tarball"
    fi
    tree=$(unpack_source "$tb")
fi

# make is incremental: on a cached tree this only re-checks. Build output goes to a log file
# ("fatal: not a git repository" and "Building without amdgpu_plugin" in it are harmless).
log "building in $tree (make -j$(nproc), log: $BUILD_LOG)"
start=$SECONDS
if [ -x "$tree/criu/criu" ] && ! has_kdat_dir "$tree/criu/criu"; then
    rm -f "$tree/criu/kerndat.o" # built with another RUNDIR: make does not see a flag change
fi
if ! make -C "$tree" -j"$(nproc)" RUNDIR="$KDAT_DIR" >"$BUILD_LOG" 2>&1; then
    tail -n 30 "$BUILD_LOG" >&2
    die "CRIU build failed; full log in $BUILD_LOG"
fi
log "build done in $((SECONDS - start)) s; installing into $PREFIX"
# install-criu only: the full `make install` also wants asciidoc/xmlto and pip-installs pycriu.
if ! make -C "$tree" install-criu PREFIX="$PREFIX" RUNDIR="$KDAT_DIR" >>"$BUILD_LOG" 2>&1; then
    tail -n 30 "$BUILD_LOG" >&2
    die "make install-criu failed; full log in $BUILD_LOG"
fi

bin=$PREFIX/sbin/criu
[ -x "$bin" ] || die "$bin missing after make install-criu"
version_ok "$bin" || die "$bin reports version '$(criu_version "$bin")', need >= $MIN_VERSION"
check_ok "$bin" || die "$bin was built and installed but 'criu check' fails on this kernel"
finish "$bin"
