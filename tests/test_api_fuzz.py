"""The API fuzzed from its own OpenAPI document (schemathesis): every operation, with
generated parameters and bodies, sent as a device (its access token), as each operator
role (admin, operator, viewer, installer) and anonymously. Whatever the input and the
caller, no answer is a 500 and none breaks the schema the document gives for it.

One controller (SQLite, rate limits off, claim polls not held open) serves the module.
Half of the examples use the generated path parameters (mostly unknown ids: 404s);
the other half name objects that exist (the device's own id for a device, a site's
device for an operator, a real site, user, token, profile), so the fuzzing reaches
the services and not only the router. A call as admin may change the world for the
calls after it (disable a user, decommission the victim device): that is fine, the
claim is only that nothing answers 500 or off-schema.

``HYPOTHESIS_PROFILE=fuzz`` raises the examples per operation (``API_EXAMPLES``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.settings import load_settings
from tests.fuzz_settings import API_EXAMPLES, tried
from tests.support.apiclient import Api, TestDevice

CHECKS = [not_a_server_error, response_schema_conformance]
REFRESH_EVERY = 1000
"""Cases between two logins of the device (a few minutes of fuzzing)."""
CALLERS = ("device", "admin", "operator", "viewer", "installer", "anonymous")


@dataclass
class FuzzWorld:
    api: Api
    device: TestDevice
    victim: TestDevice
    """A device for operators' calls to act on, so the caller device keeps working."""
    tokens: dict[str, str | None]
    real: dict[str, str]
    """Path parameters that name something that exists."""
    turn: Iterator[int]


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    settings_ = load_settings(
        data_dir=tmp_path_factory.mktemp("fuzz") / "controller",
        enrol_rate_per_second=0,
        token_rate_per_second=0,
        claim_rate_per_second=0,
        claim_poll_seconds=0,
        gitops_debounce_seconds=0.2,
    )
    prepared = prepare(settings_)
    app = create_app(settings_)
    with TestClient(app, base_url="https://testserver") as client:
        assert prepared.new_admin_token is not None
        api = Api(client, prepared.new_admin_token, prepared.controller_id)
        api.site("shop-a")
        api.site("shop-b")
        api.profile("retail", {"config": {"n": 1}})
        made = api.token(site="shop-a", profile="retail")
        device, victim = api.device(made["token"]), api.device(made["token"])
        tokens: dict[str, str | None] = {
            "device": device.access_token,
            "admin": api.admin,
            "operator": api.user("op", "operator"),
            "viewer": api.user("view", "viewer"),
            "installer": api.user("inst", "installer", site="shop-b"),
            "anonymous": None,
        }
        api.user("someone", "viewer")
        real = {
            "name": "retail",
            "kid": made["kid"],
            "username": "someone",
            "repository": "shop-a",
            "rollout_id": "1",
            "update_id": "1",
            "claim_id": "unknown",
        }
        yield FuzzWorld(api, device, victim, tokens, real, itertools.count())
    app.state.rt.engine.dispose()


def _name_real_objects(world: FuzzWorld, case: Any, caller: str) -> None:
    params = case.path_parameters or {}
    for key in params:
        if key == "device_id":
            params[key] = (world.device if caller == "device" else world.victim).id
        elif key in world.real:
            params[key] = world.real[key]


def _send_as_everyone(world: FuzzWorld, case: Any) -> None:
    tried("schemathesis cases")
    turn = next(world.turn)
    real = turn % 2 == 1
    if turn and turn % REFRESH_EVERY == 0:  # access tokens live 15 minutes; a fuzz run more
        world.api.login(world.device)
        world.tokens["device"] = world.device.access_token
    generated = dict(case.path_parameters or {})
    for caller in CALLERS:
        if real:
            _name_real_objects(world, case, caller)
        token = world.tokens[caller]
        headers = {"authorization": f"Bearer {token}"} if token else {}
        kwargs = case.as_transport_kwargs(base_url="https://testserver", headers=headers)
        response = world.api.client.request(**_for_httpx(kwargs))
        tried("schemathesis requests (a case as one caller)")
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseExceptionGroup as exc:
            # schemathesis' FailureGroup is a BaseException: as an AssertionError,
            # Hypothesis shrinks it and the loop below lists it with the others.
            said = f"{kwargs['method']} {kwargs['url']} -> {response.text[:300]}"
            raise AssertionError(f"as {caller}: {said}\n{exc}") from exc
        if case.path_parameters:
            case.path_parameters.update(generated)


def _for_httpx(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis speaks requests' keywords; the TestClient is httpx."""
    allowed = {"method", "url", "params", "headers", "cookies", "content", "data", "files", "json"}
    out = {k: v for k, v in kwargs.items() if k in allowed and v is not None}
    if isinstance(out.get("data"), bytes | str):
        out["content"] = out.pop("data")
    if not out.get("cookies"):
        out.pop("cookies", None)
    out.setdefault("follow_redirects", False)
    return out


def test_no_caller_gets_a_500_or_an_answer_off_its_schema(fuzz_world: FuzzWorld) -> None:
    """Every operation, valid and invalid input, as every caller; failures are listed
    by operation, each with the smallest input Hypothesis found."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_world.api.client.app)
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 50, "the document lost its operations"
    for operation in operations:
        cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
            GenerationMode.NEGATIVE
        )

        @given(case=cases)
        @settings(max_examples=API_EXAMPLES)
        def fuzz(case: Any) -> None:
            _send_as_everyone(fuzz_world, case)

        try:
            fuzz()
        except Exception as exc:
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} operations failed:\n" + "\n".join(failures)
