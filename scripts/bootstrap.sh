#!/bin/sh
# Installs the Debian packages weir needs to build and test, only the ones
# that are missing. Safe to run again. Needs root (apt-get).
set -eu

PKGS="clang llvm libbpf-dev libelf-dev zlib1g-dev linux-libc-dev make g++ python3 \
bpftool iproute2 iptables ipset nftables iperf3 sockperf dnsmasq-base libcap2-bin iputils-ping \
prometheus"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node's own headers for node-gyp (Node-API is ABI-stable, any version works).
if [ ! -f /usr/include/node/node_api.h ] && [ ! -f /usr/local/include/node/node_api.h ]; then
  missing="$missing libnode-dev"
fi

if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "weir bootstrap: missing Debian packages:$missing" >&2
    echo "weir bootstrap: run as root, or: sudo apt-get install -y$missing" >&2
    exit 1
  fi
  echo "weir bootstrap: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing
fi
