#!/bin/bash
# Install hs-tx on this machine, as root: apt packages, a virtualenv in
# $ROOT/opt/hs-tx/venv with hs-tx in it, the command /usr/local/sbin/hs-tx,
# updateManager.sh for the HOMESERVER Admin UI, a default /etc/hs-tx/config.toml
# (kept if present), the modules dir, and the systemd units (boot-time recovery,
# the update timer), enabled.
# ROOT (default /) installs into another root, e.g. a chroot or an image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/}
ROOT=${ROOT%/}
[ "$(id -u)" -eq 0 ] || { echo "install: run as root" >&2; exit 2; }
./scripts/setup.sh --apt-only

venv="$ROOT/opt/hs-tx/venv"
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check .
install -d -m 0755 "$ROOT/usr/local/sbin" "$ROOT/etc/hs-tx" "$ROOT/usr/local/lib/hs-tx/modules"
ln -sfn /opt/hs-tx/venv/bin/hs-tx "$ROOT/usr/local/sbin/hs-tx"
install -m 0755 scripts/recover.sh "$ROOT/usr/local/sbin/hs-tx-recover"
# the Admin UI's entry point, where the HOMESERVER orchestrator kept it (its own
# updateManager.sh, when there is one, is kept beside it as updateManager.sh.orig)
install -d -m 0755 "$ROOT/usr/local/lib/updates"
manager="$ROOT/usr/local/lib/updates/updateManager.sh"
if [ -f "$manager" ] && ! grep -q "updateManager.sh for hs-tx" "$manager" \
    && [ ! -e "$manager.orig" ]; then
  mv "$manager" "$manager.orig"
fi
install -m 0755 scripts/updateManager.sh "$manager"
install -m 0755 scripts/updateManager.sh "$ROOT/usr/local/sbin/updateManager.sh"
if [ ! -e "$ROOT/etc/hs-tx/config.toml" ]; then
  install -m 0644 scripts/config.toml "$ROOT/etc/hs-tx/config.toml"
fi
install -d -m 0755 "$ROOT/etc/systemd/system"
for unit in scripts/systemd/*; do
  install -m 0644 "$unit" "$ROOT/etc/systemd/system/$(basename "$unit")"
done
if [ "$ROOT" = "" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable hs-tx-recover.service hs-tx-update.timer
else
  # no running systemd (a chroot, an image, a container): enable offline
  systemctl --root="${ROOT:-/}" enable hs-tx-recover.service hs-tx-update.timer
fi
echo "hs-tx $("$venv/bin/hs-tx" --version | cut -d' ' -f2) installed; edit $ROOT/etc/hs-tx/config.toml"
