"""Module discovery, index.json validation and the module runner.

Kept import-free: the worker process imports `hs_txupdate.modules.worker`
and must not pull in anything heavy.
"""
