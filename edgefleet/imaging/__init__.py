"""Writing a registration file into what devices boot from, without root.

    partitions.py  the image's partition table (``sfdisk --json``) and choosing one
    probe.py       what file system a byte range holds (read straight from the bytes)
    fat.py         FAT partitions, with mtools on ``IMAGE@@OFFSET``
    ext4.py        ext2/3/4 partitions, with ``debugfs -w`` on ``IMAGE?offset=N``
    inject.py      ``edgefleet image inject``: validate, choose, check, write, read back
    cloudinit.py   ``edgefleet image seed``: a cloud-init NoCloud seed (ISO or FAT)
    source.py      the registration file, validated by the agent's own parser
    tools.py       finding and running the Debian tools, errors that name the package

Nothing here mounts anything or needs root: every file system is reached through
tools that read and write an image file at an offset. The CLI imports this
package; the agent never does.
"""
