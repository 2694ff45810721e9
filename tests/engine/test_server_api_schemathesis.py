"""The server API against its own published OpenAPI document (issue 15 item 2):
schemathesis loads ``/api/openapi.json`` from a live engine process and sends every
method generated bodies, valid ones and invalid ones, with the key; no answer may be a
5xx, and every answer (status, content type, body) must be one the document gives.

Bounded: ``MAX_EXAMPLES`` generated bodies per method and mode (valid, invalid), so
the whole run stays well under a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.http.openapi_server import METHODS
from tests.helpers.proc import engine_process, free_port

KEY = "schemathesis-key-" + "k" * 16
MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def admin_url() -> Iterator[str]:
    """A real engine process with the server API on its admin listener and no API rate
    limit (the run would otherwise mostly test 429)."""
    admin = free_port()
    args = ["--echo", "/echo", "--api-key", KEY, "--admin-listen", f"127.0.0.1:{admin}"]
    with engine_process([*args, "--api-rate", "0"]):
        yield f"http://127.0.0.1:{admin}"


@pytest.fixture(scope="module")
def api_schema(admin_url: str) -> Any:
    schema = schemathesis.openapi.from_url(f"{admin_url}/api/openapi.json")
    schema.config.update(base_url=admin_url)
    return schema


def _operation(schema: Any, method: str) -> Any:
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == f"/api/{method}":
            return operation
    raise AssertionError(f"/api/{method} is not in the document")


# Not schemathesis' ``from_fixture`` plugin: its lazy collection reads a private
# attribute that pytest 9 removed. One test per method and mode, driven by hypothesis.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_server_api_matches_its_document(api_schema: Any, method: str, mode: Any) -> None:
    operation = _operation(api_schema, method)
    headers = {"Authorization": f"apikey {KEY}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


def test_the_document_is_served_without_a_key(admin_url: str) -> None:
    """The admin listener is private: the documents need no key, unlike the methods."""
    import http.client

    host, port = admin_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5.0)
    try:
        conn.request("GET", "/api/openapi.json")
        resp = conn.getresponse()
        doc = orjson.loads(resp.read())
        conn.request("POST", "/api/info", body=b"{}")
        refused = conn.getresponse()
        refused.read()
    finally:
        conn.close()
    assert resp.status == 200 and doc["openapi"] == "3.1.0"
    assert refused.status == 401
