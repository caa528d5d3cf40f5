#!/bin/sh
# Install docker CLI plugins from Debian 13's packages, for hosts whose docker CLI lacks
# them: Compose v2 (`docker compose`, package docker-compose) and buildx (`docker buildx`,
# package docker-buildx). Debian 12 packages only Compose v1 and no buildx, so this reads
# trixie's package index into a private apt state folder and leaves the system's alone.
# Arguments: the plugins to install (compose, buildx); default both.
set -eu
mirror=${COVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
dest=${CLI_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}
[ $# -gt 0 ] || set -- compose buildx
plugins="$*"
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
for plugin in $plugins; do
    case $plugin in
        compose|buildx) ;;
        *) echo "unknown plugin '$plugin' (compose or buildx)" >&2; exit 2 ;;
    esac
    apt-get "$@" -qq download "docker-$plugin"
    dpkg-deb -x docker-"$plugin"_*.deb "root-$plugin"
    install -D -m 0755 "root-$plugin/usr/libexec/docker/cli-plugins/docker-$plugin" \
        "$dest/docker-$plugin"
    echo "installed the $plugin plugin: $("$dest/docker-$plugin" version | head -n 1)"
done
