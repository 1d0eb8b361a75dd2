#!/usr/bin/env bash
# Build a Debian bookworm base image (clawden-base:bookworm) from Debian packages, for hosts
# that cannot pull the configured base image. The mirror is read from the host's apt sources.
# `--include a,b` adds packages (the systemd test image: `--tag clawden-systemd:bookworm
# --include systemd,systemd-sysv,dbus`).
set -euo pipefail

TAG="${CLAWDEN_BASE_TAG:-clawden-base:bookworm}"
SUITE="bookworm"
INCLUDE="python3,python3-venv,git,curl,ca-certificates,tini"
FORCE=0

usage() {
    echo "usage: $0 [--force] [--tag TAG] [--include PKG,PKG...]" >&2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) FORCE=1 ;;
        --tag) TAG="$2"; shift ;;
        --include) INCLUDE="$INCLUDE,$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
    shift
done

log() { echo "[bootstrap-base] $*" >&2; }

# First Debian mirror URI from the host's apt sources (deb822 first, then one-line format).
debian_mirror() {
    local uri=""
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e "$f" ]] || continue
        uri="$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")"
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -e "$f" ]] || continue
            uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { if ($i !~ /security/) print $i; exit } }' "$f")"
            [[ -n "$uri" ]] && break
        done
    fi
    [[ -n "$uri" ]] || { log "no Debian mirror found in /etc/apt sources"; return 1; }
    echo "$uri"
}

if [[ "$FORCE" -eq 0 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already exists (use --force to rebuild)"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    log "debootstrap needs root"
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

MIRROR="$(debian_mirror)"
ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/clawden-rootfs.XXXXXX")"
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT

log "debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR"

log "trimming apt lists, caches, docs and translations"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# Packages installed later into the image skip the same paths.
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/clawden-excludes" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"
# debootstrap copies these from the host; Docker provides its own at run time.
: > "$ROOTFS/etc/resolv.conf"
echo localhost > "$ROOTFS/etc/hostname"

OLD_ID="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
log "importing $TAG"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "clawden: debootstrap $SUITE minbase with $INCLUDE" \
    - "$TAG" >/dev/null
if [[ -n "$OLD_ID" ]]; then
    # The replaced image; this fails harmlessly while images built on it still exist.
    docker image rm "$OLD_ID" >/dev/null 2>&1 || true
fi
log "built $TAG"
