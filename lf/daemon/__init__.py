"""Daemons: records of what lf started, process identity, health probes, states, supervision.

Knows nothing of runtimes or llamafarm.yaml: it launches the Instance a runtime worked out and reports on it.
"""
