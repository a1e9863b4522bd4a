"""The network guard's mechanics: an update never cuts a headless server off the network.

`model` is pure (the captured state as JSON-ready dicts, compare, restore plans,
`ip` commands, source hosts); `netlink` talks to the kernel with pyroute2.
Both work on plain data; tying them to a transaction and its journal is
`core.netguard`'s job.

Kept import-free on purpose: only the parent hs-tx process imports
`netlink` (and so pyroute2), and only when `[net] guard` is on.
"""
