#!/bin/sh
# Install the Compose v2 plugin (`docker compose`) from Debian 13's docker-compose package,
# for hosts whose docker CLI has none. Debian 12 only packages Compose v1, so this reads
# trixie's package index into a private apt state folder and leaves the system's alone.
set -eu
mirror=${COVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
dest=${COMPOSE_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
    > "$tmp/sources.list"
set -- -o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" \
    -o APT::Sandbox::User=root
apt-get "$@" -qq update
cd "$tmp"
apt-get "$@" -qq download docker-compose
dpkg-deb -x docker-compose_*.deb root
install -D -m 0755 root/usr/libexec/docker/cli-plugins/docker-compose "$dest/docker-compose"
echo "installed the compose plugin: $("$dest/docker-compose" version)"
