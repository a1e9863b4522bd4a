#!/bin/bash
# updateManager.sh for hs-tx: the command line of the HOMESERVER orchestrator's
# updateManager.sh (which the Admin UI drives), each flag mapped onto an hs-tx command.
# hs-tx prints in the orchestrator's line format (--log-format homeserver); this script
# only picks the command, logs the wrapper's own lines and maps the exit code.
#
# Environment: HS_TX (the hs-tx to run; default: hs-tx on PATH), HS_TX_UPDATE_LOG
# (default /var/log/homeserver/update.log), HS_TX_CONFIG and the rest reach hs-tx as given.
# A full update truncates the log and writes everything there, as the original did;
# every other flag prints to stdout only. Exit 0 on success, 1 on anything else (the
# last line names hs-tx's own exit code).
set -uo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

HS_TX=${HS_TX:-hs-tx}
LOG_FILE=${HS_TX_UPDATE_LOG:-/var/log/homeserver/update.log}

log() {
    printf '[%s] [INFO] %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$1"
}

usage() {
    cat <<USAGE
HOMESERVER Update Manager (hs-tx)

Usage: $0 [OPTIONS]

Update Operations:
  --check         Report available updates and run the modules' checks; change nothing
  --legacy        Gone: hs-tx runs every update as one transaction (exit 1)
  --help, -h      Show this help message

Module Management:
  --enable <module>                          Enable a module
  --disable <module>                         Disable a module
  --enable-component <module> <component>    Enable a component of a module
  --disable-component <module> <component>   Disable a component of a module
  --list-modules                             List all modules
  --set-module-branch <module> <branch>      Set the branch of a module's own repository
  --status [module]                          Status of all modules, or of one
  --module-status <module>                   Status of one module
  --all-status                               Status of all modules

Default behavior: run a full update (hs-tx update), logged to $LOG_FILE
USAGE
}

hs_tx() {
    "$HS_TX" --log-format homeserver "$@" 2>&1
}

need() {  # FLAG COUNT WHAT VALUES...: refuse a flag given fewer than COUNT values
    local flag=$1 count=$2 what=$3 n
    shift 3
    for ((n = 1; n <= count; n++)); do
        # no module, component or branch name starts with "-": that is another flag
        if [ -z "${!n:-}" ] || [ "${!n#-}" != "${!n}" ]; then
            log "Error: $flag requires $what"
            usage
            exit 1
        fi
    done
}

mode=full
operation=()
target=""
component=""
while [ "$#" -gt 0 ]; do
    case $1 in
        --check) mode=check; shift ;;
        --legacy) mode=legacy; shift ;;
        --enable|--disable)
            need "$1" 1 "a module name" "${@:2}"
            operation=(modules "${1#--}" "$2"); target=$2; shift 2 ;;
        --enable-component|--disable-component)
            need "$1" 2 "module and component names" "${@:2}"
            word=${1#--}
            operation=(modules "${word%-component}" "$2" "$3"); target=$2; component=$3; shift 3 ;;
        --list-modules) operation=(modules list); shift ;;
        --set-module-branch)
            need "$1" 2 "module name and branch" "${@:2}"
            operation=(modules branch "$2" "$3"); target=$2; shift 3 ;;
        --status)
            if [ -n "${2:-}" ] && [ "${2#-}" = "$2" ]; then
                operation=(modules status "$2"); target=$2; shift 2
            else
                operation=(modules status); shift
            fi ;;
        --module-status)
            need "$1" 1 "a module name" "${@:2}"
            operation=(modules status "$2"); target=$2; shift 2 ;;
        --all-status) operation=(modules status); shift ;;
        --help|-h) usage; exit 0 ;;
        *) log "Unknown option: $1"; usage; exit 1 ;;
    esac
done

if [ "${#operation[@]}" -eq 0 ] && [ "$mode" != check ]; then
    # an update run: the Admin UI reads this log while it runs
    mkdir -p "$(dirname "$LOG_FILE")" 2>/dev/null || true
    : > "$LOG_FILE" || { log "Error: cannot write $LOG_FILE"; exit 1; }
    exec >"$LOG_FILE" 2>&1
fi

log "Starting HOMESERVER update manager..."
if ! command -v "$HS_TX" >/dev/null 2>&1; then
    log "Error: hs-tx not found (HS_TX=$HS_TX)"
    exit 1
fi

if [ "${#operation[@]}" -gt 0 ]; then
    word=${operation[1]}
    [ "$word" = branch ] && word=set-branch  # the original's word for it
    log "Operation: $word"
    [ -n "$target" ] && log "Target: $target"
    [ -n "$component" ] && log "Component: $component"
    hs_tx "${operation[@]}"
    code=$?
    if [ "$code" -eq 0 ]; then
        log "✓ Module management operation completed successfully"
        log "Module management completed successfully"
        exit 0
    fi
    log "✗ Module management operation failed with exit code $code"
    log "Module management failed (hs-tx exit code $code)"
    exit 1
fi

log "Mode: $mode"
if [ "$mode" = legacy ]; then
    log "Error: --legacy (manifest-based updates) is gone: hs-tx runs every update as one"
    log "transaction from the module source, rolled back as a whole when it fails; run"
    log "$0 without --legacy"
    log "Update manager failed (no update was run)"
    exit 1
fi
if [ "$mode" = check ]; then
    hs_tx update --check
else
    hs_tx update --progress=lines
fi
code=$?
if [ "$code" -eq 0 ]; then
    log "✓ Update system completed successfully"
    log "Update manager completed successfully"
    exit 0
fi
log "✗ Update system failed with exit code $code"
log "Update manager failed (hs-tx exit code $code)"
exit 1
