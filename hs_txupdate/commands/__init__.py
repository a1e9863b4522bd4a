"""One typed public function per CLI verb; tests call them directly.

    update.update      hs-tx update            check.check     hs-tx update --check
    undo.undo          hs-tx undo ID           recover.recover hs-tx recover
    status.status      hs-tx status            history.history / history.show
    modules.list_modules / module_status / module_components / module_scope
                       hs-tx modules list|status|components|scope
    module_config.set_enabled / set_branch    hs-tx modules enable|disable|branch

Each takes a `context.Context` (see `context.open_context`) and returns data or
an exit code; errors are `base.errors.HsTxError` with a message and a hint.
The machinery the verbs share lives in `core`.
"""
