#!/bin/bash
# Finish an hs-tx transaction that a crash or power loss cut off, by hand.
# From a rescue shell: mount the root filesystem read-write (and /var if it is
# separate), then run this script (installed as /usr/local/sbin/hs-tx-recover).
# It rolls back, or marks committed/aborted, every unfinished transaction from
# the journal and the snapshots, then prints the status. Exit 0: all final;
# 3: something could not be repaired (the output says what to do by hand).
set -uo pipefail
HS_TX=${HS_TX:-/usr/local/sbin/hs-tx}
if ! touch /var/lib/.hs-tx-rw-probe 2>/dev/null; then
  echo "hs-tx-recover: /var/lib is read-only; remount it read-write first (mount -o remount,rw /)" >&2
  exit 2
fi
rm -f /var/lib/.hs-tx-rw-probe
"$HS_TX" recover "$@"
rc=$?
"$HS_TX" status
exit "$rc"
