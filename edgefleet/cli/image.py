"""``edgefleet image inject | seed | partitions``: registration files into device images."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from edgefleet.cli.common import handled
from edgefleet.cli.output import Format, OutputOpt, show

app = typer.Typer(
    help="Write a registration file into a disk image or a cloud-init seed (no root needed).",
    no_args_is_help=True,
)
RegistrationOpt = typer.Option(
    ..., "--registration", "-r", help="The registration file (edgefleet tokens create)"
)


class SeedFormat(StrEnum):
    iso = "iso"
    fat = "fat"


@app.command()
@handled
def inject(
    image: Path = typer.Argument(..., help="Raw disk image with an MBR or GPT partition table"),
    registration: Path = RegistrationOpt,
    partition: str | None = typer.Option(
        None,
        "--partition",
        "-p",
        help="Number, GPT name or file system label; default: the first FAT (boot) partition",
    ),
    path: str | None = typer.Option(
        None,
        help="Path inside the partition; default edgefleet/registration.yaml on FAT "
        "(the device's /boot), etc/edgefleet/registration.yaml on ext2/3/4",
    ),
) -> None:
    """Write the registration file into a FAT or ext2/3/4 partition of IMAGE."""
    from edgefleet.agent.settings import REGISTRATION_SEARCH_PATH
    from edgefleet.imaging.inject import inject as run

    done = run(image, registration, partition, path)
    mode = f"mode {done.mode:o}" if done.mode is not None else "FAT keeps no file modes"
    typer.echo(
        f"wrote {done.path} ({done.size} bytes, {mode}) into partition {done.partition.describe()} "
        f"of {image}; the device sees it as {done.device_path}"
    )
    if Path(done.device_path) not in REGISTRATION_SEARCH_PATH:
        looked = ", ".join(str(p) for p in REGISTRATION_SEARCH_PATH)
        typer.echo(
            f"note: the agent looks in {looked}; start it with --registration "
            f"{done.device_path} (or EDGEFLEET_AGENT_REGISTRATION)"
        )


@app.command()
@handled
def seed(
    output: Path = typer.Argument(
        ..., help="The seed to write: NAME.iso (ISO 9660) or NAME.img (FAT); updated if it exists"
    ),
    registration: Path = RegistrationOpt,
    hostname: str | None = typer.Option(None, help="local-hostname in meta-data"),
    format: SeedFormat | None = typer.Option(
        None, "--format", help="iso or fat; default: the existing seed's, else from the name"
    ),
    user_data: Path | None = typer.Option(
        None, help="A #cloud-config file to merge into (instead of the seed's own user-data)"
    ),
    enable_service: str | None = typer.Option(
        None,
        help="Also add `systemctl enable --now UNIT` to runcmd (the image must have that unit)",
    ),
) -> None:
    """Write a cloud-init NoCloud seed whose user-data places the registration file."""
    from edgefleet.imaging.cloudinit import DEVICE_PATH
    from edgefleet.imaging.cloudinit import seed as run

    done = run(
        output,
        registration,
        fmt=format.value if format else None,
        hostname=hostname,
        user_data=user_data,
        enable_service=enable_service,
    )
    verb = "updated" if done.updated else "wrote"
    typer.echo(
        f"{verb} {done.format.upper()} seed {output} ({', '.join(done.files)}; instance-id "
        f"{done.instance_id}); cloud-init writes {DEVICE_PATH} with mode 0600 on first boot"
    )


@app.command()
@handled
def partitions(
    image: Path = typer.Argument(..., help="Raw disk image"), output: Format = OutputOpt
) -> None:
    """List IMAGE's partitions and the file system each holds."""
    from edgefleet.imaging.partitions import read_table

    disk = read_table(image)
    rows = [
        {
            "number": p.number,
            "name": p.name,
            "label": p.fs.label,
            "filesystem": p.fs.variant,
            "start": p.start,
            "size": p.size,
            "writable": p.fs.kind in ("fat", "ext"),
        }
        for p in disk.partitions
    ]
    show(rows, output, ["number", "name", "label", "filesystem", "start", "size", "writable"])
