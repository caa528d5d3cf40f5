#!/bin/sh
# Install only the docker CLI (not a daemon) from Debian's docker.io package, for hosts
# that have no `docker` command: Cove provides the engine, the host needs the client.
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download docker.io >/dev/null
dpkg-deb -x docker.io_*.deb root
install -m 0755 root/usr/bin/docker /usr/local/bin/docker
echo "installed the docker CLI: $(/usr/local/bin/docker --version)"
