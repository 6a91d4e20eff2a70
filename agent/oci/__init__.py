"""The device's side of models as OCI artifacts: a content-addressed blob store and a
pull by digest that resumes, verifies every byte, and prefers the site's mirrors.

Standard library only (plus ``edgefleet.oci`` and the stdlib parts of
``edgefleet.models``): the daemon must not carry onnxruntime, NumPy or httpx.
"""
