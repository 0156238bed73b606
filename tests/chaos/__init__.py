"""Fault-injection suite: real gateway processes under faults (make chaos)."""
