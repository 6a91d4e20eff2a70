"""The controller's own PKI: a root, a server intermediate and a device intermediate."""

from edgefleet.controller.pki.authority import Authority, load_or_create_authority

__all__ = ["Authority", "load_or_create_authority"]
