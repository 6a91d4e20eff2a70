"""Edgefleet: the parts shared by controller, agent and CLI.

This package holds only what crosses a process boundary (wire models, errors,
request signing, pins) and the CLI root. It imports neither the controller nor
the agent, so both can depend on it.
"""

__version__ = "0.1.0"
