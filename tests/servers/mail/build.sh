#!/usr/bin/env bash
# Build clawden-mailserver:test, the real Postfix + Dovecot the email tests talk to on loopback: the
# Debian packages the bootstrapped base lacks are fetched on the host into the build context, and the
# image is built with `--network none` on clawden-base:bookworm (container/bootstrap-base.sh).
# bin/setup --tests runs it; tests/servers/mail/fixture.py starts the image once per test session.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TAG="${CLAWDEN_MAILSERVER_TAG:-clawden-mailserver:test}"
BASE="${CLAWDEN_BASE_TAG:-clawden-base:bookworm}"
PACKAGES=(postfix dovecot-core dovecot-imapd dovecot-lmtpd)
log() { echo "[mailserver] $*" >&2; }

# The fixture compares this label with the same hash of these three files: a stale image fails the tests.
digest="$(cat build.sh Dockerfile entrypoint.sh | sha256sum | cut -c1-16)"
if [[ "$(docker image inspect --format '{{index .Config.Labels "dev.clawden.source"}}' "$TAG" 2>/dev/null)" == "$digest" ]]; then
    log "$TAG is current"
    exit 0
fi

CTX="$(mktemp -d "${TMPDIR:-/tmp}/clawden-mailserver.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
cp Dockerfile entrypoint.sh "$CTX/"
mkdir "$CTX/debs"

# apt resolves the packages against the base image's own dpkg status, so it fetches exactly what the
# base lacks (a bare dependency walk would also pick alternatives, such as libelogind0 for libsystemd0).
apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1 || apt-get update -qq  # a fresh machine has no lists yet
docker run --rm --network none "$BASE" cat /var/lib/dpkg/status > "$CTX/status"
mkdir -p "$CTX/debs/partial"
apt-get install -qq -y --download-only -o APT::Sandbox::User=root --no-install-recommends -o "Dir::State::status=$CTX/status" \
    -o "Dir::Cache::archives=$CTX/debs" "${PACKAGES[@]}" >/dev/null
rm -rf "$CTX/debs/partial" "$CTX/debs/lock" "$CTX/status"
log "fetched $(ls "$CTX/debs" | wc -l) Debian packages"

log "building $TAG"
docker build -q --network none --build-arg "BASE=$BASE" --label "dev.clawden.source=$digest" -t "$TAG" "$CTX" >/dev/null
log "built $TAG"
