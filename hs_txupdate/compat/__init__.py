"""The `updates` import shim for HOMESERVER-style modules.

Module workers put this directory on sys.path, so a module's
`from updates.index import log_message` finds `compat/updates/`.
"""
