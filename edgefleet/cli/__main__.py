"""``python -m edgefleet.cli`` is the ``edgefleet`` command."""

from edgefleet.cli.entry import main

main()
