"""Daemons: records of what lf started, process identity, health probes, states, supervision.

Knows nothing of runtimes or llamafarm.yaml: it launches what a LaunchPlan says and reports on it.
"""
