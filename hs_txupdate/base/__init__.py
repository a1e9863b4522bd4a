"""The floor every other package stands on: errors and exit codes, durable file
writes, the one subprocess runner, and the crash points of the test sweeps.

Imports nothing of hs-tx and nothing heavy: module workers load it too.
"""
