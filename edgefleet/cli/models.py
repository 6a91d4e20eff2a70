"""``edgefleet models push | list | inspect | keygen | sign | verify``: ONNX models as OCI
artifacts in a registry, and their signatures (``edgefleet.models.signature_store``).

Registry credentials: ``EDGEFLEET_REGISTRY_USERNAME`` and ``EDGEFLEET_REGISTRY_PASSWORD``
when set (Basic, or Basic to the token realm); otherwise the operator's API token from
``edgefleet login`` goes to the token realm, if that realm is the controller's. A
registry without authentication needs neither.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli import config
from edgefleet.cli.common import Globals, handled
from edgefleet.cli.output import Format, OutputOpt, console, show
from edgefleet.drift.reference import Reference
from edgefleet.errors import ConfigError
from edgefleet.models import signature_store, signing
from edgefleet.models.artifact import describe
from edgefleet.models.probe import Probe
from edgefleet.oci.auth import PasswordAuth
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.listing import list_tags
from edgefleet.oci.manifest import Manifest
from edgefleet.oci.reference import parse
from edgefleet.oci.transport import Endpoint

app = typer.Typer(help="ONNX models as OCI artifacts in a registry.", no_args_is_help=True)

RegistryOpt = typer.Option(
    ...,
    "--registry",
    envvar="EDGEFLEET_REGISTRY",
    help="Registry host[:port] (or http(s)://host[:port]) [env EDGEFLEET_REGISTRY]",
)
PlainHttpOpt = typer.Option(
    False,
    "--plain-http",
    envvar="EDGEFLEET_REGISTRY_PLAIN_HTTP",
    help="Speak http, not https, to the registry (a registry on loopback or a lab network)",
)
CaFileOpt = typer.Option(
    None, "--registry-ca-file", help="Certificate to trust for the registry's TLS"
)


@app.command()
@handled
def push(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="The .onnx model file"),
    name: str = typer.Option(..., help="Repository, e.g. models/detector"),
    version: str = typer.Option(..., help="Version, the tag to push it as, e.g. 1.4.0"),
    registry: str = RegistryOpt,
    quantize: str | None = typer.Option(
        None, help="Also push a quantized variant, tagged <version>-int8: int8"
    ),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        help="An .npz of representative inputs (one array per model input, by name): "
        "store their distributions and the model's outputs on them, for drift scores",
    ),
    reference_outputs: str = typer.Option(
        "auto",
        "--reference-outputs",
        help="How to histogram the outputs: classes (argmax or integer labels), values "
        "(a regressor), or auto (classes for integers or score vectors)",
    ),
    plain_http: bool = PlainHttpOpt,
    ca_file: Path | None = CaFileOpt,
    output: Format = OutputOpt,
) -> None:
    """Pack the model with its signature, golden probe and (with --reference) drift
    reference, push it, print its digest."""
    from edgefleet.models.pack import push_model  # onnx and onnxruntime load here only

    with _client(ctx, registry, plain_http, ca_file) as client:
        pushed = push_model(client, file, name, version, quantize, reference, reference_outputs)
    host = client.endpoint.host
    rows = [
        {
            "reference": f"{host}/{name}:{p.tag}@{p.digest}",
            "tag": p.tag,
            "digest": p.digest,
            "variant": p.variant,
            "signature": p.signature.summary(),
            "probe": p.probe.summary(),
            "drift_reference": p.reference.summary() if p.reference else None,
        }
        for p in pushed
    ]
    if output == Format.json:
        show(rows, output, [])
        return
    for row in rows:
        console.print(f"pushed {row['reference']}", highlight=False, soft_wrap=True)
    parent = next((r for r in rows if r["variant"] == "fp32"), None)
    for row in rows:
        if row["variant"] != "fp32" and parent is not None:
            snippet = _parent_snippet(name, row["reference"], parent["reference"])
            console.print(snippet, end="", soft_wrap=True, highlight=False, markup=False)


def _parent_snippet(name: str, reference: str, parent: str) -> str:
    """The profile entry that runs the quantized variant and compares it on every device
    with its full-precision parent (``edgefleet drift agreement --key parent``)."""
    return (
        "\nIn a profile, to run the quantized model and see what it costs in accuracy on "
        "real site data:\n"
        "models:\n"
        f"  - name: {name.rsplit('/', 1)[-1]}\n"
        f"    reference: {reference}\n"
        f"    parent: {parent}\n"
    )


@app.command("list")
@handled
def list_(
    ctx: typer.Context,
    registry: str = RegistryOpt,
    name: str | None = typer.Option(None, help="Only this repository"),
    plain_http: bool = PlainHttpOpt,
    ca_file: Path | None = CaFileOpt,
    output: Format = OutputOpt,
    signature_tags: bool = typer.Option(
        False, "--signature-tags", help="Also list the sha256-<hex>.sig tags signatures use"
    ),
) -> None:
    """Repositories and their tags (without the tags model signatures are stored under)."""
    with _client(ctx, registry, plain_http, ca_file) as client:
        listing = list_tags(client, name)
    rows = [
        {
            "repository": repo,
            "tags": [t for t in tags if signature_tags or not signature_store.is_signature_tag(t)],
        }
        for repo, tags in listing.items()
    ]
    show(rows, output, ["repository", "tags"])


@app.command()
@handled
def inspect(
    ctx: typer.Context,
    reference: str = typer.Argument(..., help="host[:port]/repository:tag or …@sha256:<hex>"),
    plain_http: bool = PlainHttpOpt,
    ca_file: Path | None = CaFileOpt,
    output: Format = OutputOpt,
) -> None:
    """The artifact's digest, model file, signature, golden probe, drift reference, and the
    keys that signed it (unverified: `models verify` checks them)."""
    ref = parse(reference)
    with _client(ctx, ref.registry, plain_http, ca_file) as client:
        fetched = client.get_manifest(ref.repository, ref.identifier)
        manifest = Manifest.from_bytes(fetched.data, fetched.media_type)
        found = describe(manifest)
        probe = (
            Probe.from_bytes(client.fetch_blob(ref.repository, found.probe.digest))
            if found.probe
            else None
        )
        drift = (
            Reference.from_bytes(client.fetch_blob(ref.repository, found.reference.digest))
            if found.reference
            else None
        )
        signed_by = [
            f"{s.signature.keyid} ({s.signature.algorithm})"
            for s in signature_store.read(client, ref.repository, fetched.digest)
            if s.signature is not None
        ]
    info: dict[str, Any] = {
        "reference": str(ref.pinned(fetched.digest)),
        "digest": fetched.digest,
        "artifact_type": manifest.artifact_type,
        "modelpack": found.modelpack,
        "name": found.name,
        "version": found.version,
        "variant": found.variant,
        "model_file": found.model.title,
        "model_digest": found.model.digest,
        "size": sum(d.size for d in (manifest.config, *manifest.layers)),
        "model_size": found.model.size,
        "signature": found.signature.summary() if found.signature else None,
        "probe": probe.summary() if probe else None,
        "drift_reference": drift.summary() if drift else None,
        "signed_by": signed_by,
    }
    if output == Format.json:
        show(info, output, [])
        return
    show([{"": k, "value": v} for k, v in info.items()], output, ["", "value"])


@app.command()
@handled
def keygen(
    key: Path = typer.Argument(..., help="Where to write the private key (mode 0600)"),
    algorithm: str = typer.Option("ed25519", "--algorithm", help="ed25519 (default) or ecdsa-p256"),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Where to write the public key [default: KEY.pub]"
    ),
    output: Format = OutputOpt,
) -> None:
    """Make a model signing key; its public PEM goes into a profile's model_signatures."""
    if algorithm not in signing.ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}: use {' or '.join(signing.ALGORITHMS)}")
    private = signing.generate(algorithm)  # type: ignore[arg-type]
    public_path = public_key or key.with_name(key.name + ".pub")
    signing.write_keypair(private, key, public_path)
    info = {
        "key": str(key),
        "public_key": str(public_path),
        "algorithm": algorithm,
        "fingerprint": signing.fingerprint(private),
    }
    if output == Format.json:
        show(info, output, [])
        return
    console.print(
        f"wrote {key} (private, mode 0600) and {public_path}; fingerprint {info['fingerprint']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@handled
def sign(
    ctx: typer.Context,
    reference: str = typer.Argument(..., help="host[:port]/repository:tag or …@sha256:<hex>"),
    key: Path = typer.Option(..., "--key", help="Private key from `edgefleet models keygen`"),
    plain_http: bool = PlainHttpOpt,
    ca_file: Path | None = CaFileOpt,
    output: Format = OutputOpt,
) -> None:
    """Sign the model's manifest digest; the signature goes under the tag sha256-<hex>.sig."""
    private = signing.load_private(key)
    ref = parse(reference)
    with _client(ctx, ref.registry, plain_http, ca_file) as client:
        fetched = client.get_manifest(ref.repository, ref.identifier)
        describe(Manifest.from_bytes(fetched.data, fetched.media_type))  # a model, or NotAModel
        count = signature_store.add(client, ref.repository, fetched.digest, private)
    info = {
        "reference": str(ref.pinned(fetched.digest)),
        "digest": fetched.digest,
        "signature_tag": signature_store.tag_for(fetched.digest),
        "keyid": signing.fingerprint(private),
        "signatures": count,
    }
    if output == Format.json:
        show(info, output, [])
        return
    console.print(
        f"signed {info['reference']} with key {info['keyid']} "
        f"({count} signature(s) under :{info['signature_tag']})",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@handled
def verify(
    ctx: typer.Context,
    reference: str = typer.Argument(..., help="host[:port]/repository:tag or …@sha256:<hex>"),
    public_key: list[Path] = typer.Option(
        ..., "--public-key", help="A trusted public key PEM (repeat for several)"
    ),
    plain_http: bool = PlainHttpOpt,
    ca_file: Path | None = CaFileOpt,
    output: Format = OutputOpt,
) -> None:
    """Check, as a device would, that a listed key signed the model's digest."""
    keys = [signing.TrustedKey(p.name, _public(p)) for p in public_key]
    ref = parse(reference)
    with _client(ctx, ref.registry, plain_http, ca_file) as client:
        fetched = client.get_manifest(ref.repository, ref.identifier)
        good = signature_store.verify(client, ref.repository, fetched.digest, keys)
    info = {
        "reference": str(ref.pinned(fetched.digest)),
        "digest": fetched.digest,
        "verified_by": good.id,
        "keyid": good.fingerprint,
    }
    if output == Format.json:
        show(info, output, [])
        return
    console.print(
        f"verified {info['reference']}: signed by {good.id} ({good.fingerprint})",
        highlight=False,
        soft_wrap=True,
    )


def _public(path: Path) -> signing.PublicKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from exc
    return signing.load_public(pem, str(path))


def _client(
    ctx: typer.Context, registry: str, plain_http: bool, ca_file: Path | None
) -> RegistryClient:
    endpoint = Endpoint.parse(registry, plain_http=plain_http, ca_file=ca_file)
    return RegistryClient(endpoint, _auth(ctx, ca_file))


def _auth(ctx: typer.Context, registry_ca: Path | None) -> PasswordAuth:
    """The operator's registry credentials (see the module's docstring)."""
    username = os.environ.get("EDGEFLEET_REGISTRY_USERNAME")
    if username:
        password = os.environ.get("EDGEFLEET_REGISTRY_PASSWORD")
        return PasswordAuth(username, password, ca_file=registry_ca)
    root = ctx.find_root().obj
    g = root if isinstance(root, Globals) else Globals(None, None, None)
    try:
        cfg = config.load(g.url, g.token, g.ca_file)
    except ConfigError:  # no controller configured: anonymous, for an open registry
        return PasswordAuth(ca_file=registry_ca)
    return PasswordAuth(
        api_token=cfg.token, api_token_origin=cfg.url, ca_file=cfg.ca_file or registry_ca
    )
