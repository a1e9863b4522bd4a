#!/bin/bash
# Install everything hs-tx needs on a Debian machine, as root: the apt packages (btrfs-progs,
# git, attr/acl tools, ...), a virtualenv in .venv and the package itself (editable, with the
# test extras). Safe to run again; it skips apt when everything is already there.
# With --apt-only it installs the apt packages and stops (scripts/install.sh uses that).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(python3 python3-venv python3-dev git btrfs-progs e2fsprogs xfsprogs attr acl
              libcap2-bin tar util-linux iproute2 systemd ca-certificates procps openssh-client
              time)
# the benchmark's reference tools (not for an install: --apt-only leaves them out)
[ "${1:-}" = "--apt-only" ] || APT_PACKAGES+=(snapper)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "setup: run as root to install: ${missing[*]}" >&2; exit 2; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "${1:-}" = "--apt-only" ] && exit 0
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
