"""Health checks of a candidate slot: does the new revision really serve?

A check runs against the candidate's runners (never the ones serving the device), each
within its own timeout and all within the profile's deadline, and returns evidence an
operator can read after a rollback: probe expected against actual, latency samples,
a command's output. Standard library only: this runs in the agent daemon.
"""
