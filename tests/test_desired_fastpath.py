"""``GET desired`` answered 304 from the caches in front of FastAPI
(``controller/fastpath.py``): the same answer as the route's, the same metrics, and
every request it cannot answer completely (another ETag, another device's token, no
token, a decommissioned device, a changed desired state) still gets the route's
answer."""

from __future__ import annotations

import re

from tests.support.apiclient import Api, TestDevice

LABEL = "/api/v1/devices/{device_id}/desired"


def _fleet(api: Api) -> tuple[TestDevice, TestDevice]:
    api.site()
    api.profile("vision", {"config": {"fps": 5}})
    token = api.token(profile="vision")["token"]
    return api.device(token), api.device(token)


def _get(api: Api, dev: TestDevice, etag: str | None = None, token: str | None = None):
    headers = {"authorization": f"Bearer {token or dev.access_token}"}
    if etag is not None:
        headers["if-none-match"] = etag
    return api.client.get(f"/api/v1/devices/{dev.id}/desired", headers=headers)


def _counted(api: Api, status: int) -> float:
    text = api.client.get("/metrics").text
    pattern = (
        r'^edgefleet_http_requests_total\{method="GET",route="'
        + re.escape(LABEL)
        + rf'",status="{status}"\}} (\S+)$'
    )
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_held_etag_gets_an_empty_304_with_the_routes_headers_and_metrics(api: Api) -> None:
    dev, _ = _fleet(api)
    full = _get(api, dev)
    assert full.status_code == 200 and full.json()["device_id"] == dev.id
    before = _counted(api, 304)
    for _ in range(3):
        same = _get(api, dev, full.headers["etag"])
        assert same.status_code == 304 and same.content == b""
        assert same.headers["etag"] == full.headers["etag"]
        assert same.headers["cache-control"] == full.headers["cache-control"] == "no-cache"
    assert _counted(api, 304) == before + 3


def test_what_the_caches_cannot_answer_gets_the_routes_answer(api: Api) -> None:
    dev, other = _fleet(api)
    etag = _get(api, dev).headers["etag"]
    assert _get(api, dev, "W/stale").status_code == 200
    assert _get(api, dev, etag, token=other.access_token).json()["error"]["code"] == (
        "other_device"
    )
    refused = api.client.get(f"/api/v1/devices/{dev.id}/desired", headers={"if-none-match": etag})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_credentials"
    assert _get(api, dev, etag, token="not-a-token").status_code == 401


def test_a_change_of_desired_state_or_a_decommission_is_seen_at_once(api: Api) -> None:
    dev, _ = _fleet(api)
    etag = _get(api, dev).headers["etag"]
    assert _get(api, dev, etag).status_code == 304
    api.profile("vision", {"config": {"fps": 10}})  # a new revision the device follows
    changed = _get(api, dev, etag)
    assert changed.status_code == 200 and changed.json()["config"] == {"fps": 10}
    new_etag = changed.headers["etag"]
    assert new_etag != etag and _get(api, dev, new_etag).status_code == 304
    api.ok("POST", f"/devices/{dev.id}/decommission", api.admin)
    gone = _get(api, dev, new_etag)
    assert gone.status_code == 403
    assert gone.json()["error"]["code"] == "device_decommissioned"
