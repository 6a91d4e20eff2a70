"""The Edgefleet device agent: enrol, keep an access token, follow the desired state.

Only stdlib, cryptography, PyJWT, PyYAML, pydantic and the shared
``edgefleet`` modules may be imported from here, so that a device never
carries the controller's or the operator CLI's dependencies (see DESIGN.md,
Parts). ``tests/agent/test_agent_import_closure.py`` guards that.
"""
