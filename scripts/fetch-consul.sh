#!/usr/bin/env bash
# Make a Consul binary available and print its path.
#
# Order: $CONSUL_BIN, a `consul` on PATH, a copy already unpacked in tools/, and
# last a download of Debian bullseye's `consul` package (1.8.7) from the same
# archive this machine's apt already uses. The system's apt configuration is
# never touched: we point apt at a private one-line sources list and a private
# lists directory. On systems without apt, install Consul from your usual source.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
tools="$here/tools"
local_bin="$tools/consul/usr/bin/consul"

if [ -n "${CONSUL_BIN:-}" ] && [ -x "${CONSUL_BIN}" ]; then echo "$CONSUL_BIN"; exit 0; fi
if command -v consul >/dev/null 2>&1; then command -v consul; exit 0; fi
if [ -x "$local_bin" ]; then echo "$local_bin"; exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "fetch-consul: no consul on PATH and no apt-get here; install Consul 1.8+ and set CONSUL_BIN" >&2
    exit 1
fi

# The archive URI this machine already uses for Debian (deb822 first, classic list second).
uri=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
fi
if [ -z "$uri" ]; then
    echo "fetch-consul: cannot read a Debian archive URI from the apt sources; install Consul and set CONSUL_BIN" >&2
    exit 1
fi

work="$tools/apt"
mkdir -p "$work/lists/partial" "$work/archives/partial" "$tools/consul"
echo "deb $uri bullseye main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Debug::NoLocking=1")
echo "fetch-consul: downloading Debian bullseye's consul package" >&2
apt-get -qq "${apt_opts[@]}" update >&2
(cd "$work" && apt-get -qq "${apt_opts[@]}" download consul >&2)
deb=$(ls "$work"/consul_*.deb | head -n 1)
dpkg-deb -x "$deb" "$tools/consul"
"$local_bin" version >&2
echo "$local_bin"
