"""An OCI distribution client in the standard library, shared by agent, CLI and controller.

One verb per module: ``push``, ``resolve``, ``listing``; ``client`` speaks the ``/v2/``
API, ``transport`` HTTP, ``auth`` the registry's challenges; ``reference``,
``manifest``, ``digest`` and ``mediatypes`` hold the vocabulary; ``errors`` the one
family of exceptions.
"""

from edgefleet.oci.auth import PasswordAuth, ScopedTokens
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import OciError
from edgefleet.oci.reference import Reference, parse
from edgefleet.oci.transport import Endpoint

__all__ = [
    "Endpoint",
    "OciError",
    "PasswordAuth",
    "Reference",
    "RegistryClient",
    "ScopedTokens",
    "parse",
]
