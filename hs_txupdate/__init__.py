"""hs-tx: transactional updates for HOMESERVER-style update modules.

Kept import-free on purpose: module workers import this package, and they must
stay lean (no SQLAlchemy or pyroute2 in a worker process).
"""

__version__ = "0.1.0"
