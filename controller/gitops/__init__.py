"""The fleet repository: the database's intent projected into Git.

See DESIGN.md, "Desired state and GitOps".

``model`` holds the plain input state, ``render`` turns it into files per repository
(pure and deterministic), ``repository`` writes them with Git plumbing (one commit per
change, none when nothing changed), and ``sync`` ties the three together for the
controller's one writer.
"""
