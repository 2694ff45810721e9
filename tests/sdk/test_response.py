"""sdk.Response refuses, at construction, what HTTP cannot carry (the engine would
answer 502 for it): the handler's author gets a ValueError naming the culprit."""

from __future__ import annotations

from typing import Any

import pytest

from sdk import Response


@pytest.mark.parametrize("status", [100, 101, 103, 199, 99, 1000, 0, -1, True, "200", 200.0])
def test_status_outside_200_999_is_refused(status: Any) -> None:
    with pytest.raises(ValueError, match=rf"bad HTTP status {status!r}"):
        Response(status)


@pytest.mark.parametrize("status", [200, 201, 204, 302, 404, 502, 999])
def test_final_statuses_are_accepted(status: int) -> None:
    assert Response(status).status == status


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nSet-Cookie: evil=1",
        "a\nb",
        "a\rb",
        "nul\x00",
        "bell\x07",
        "del\x7f",
        "snow\u2603",
    ],
)
def test_header_value_http_cannot_carry_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ValueError, match="header 'x-custom'") as info:
        Response(headers=[("x-custom", value)])
    assert value not in str(info.value)  # it may be a cookie or a token
    with pytest.raises(ValueError, match="header 'x-custom'"):
        Response(headers={"x-custom": value})


@pytest.mark.parametrize("name", ["x bad", "x:bad", "x\r\nbad", "", "caf\u00e9", "a(b)"])
def test_header_name_that_is_not_a_token_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad header name"):
        Response(headers=[(name, "v")])


def test_good_headers_pass_and_surrounding_whitespace_is_dropped() -> None:
    resp = Response(
        201,
        json={"id": 1},
        headers=[
            ("Location", "/x/1"),
            ("x-padded", "  a b\tc  "),
            ("x-latin", "caf\u00e9"),
            ("x-n", 3),  # type: ignore[list-item]
        ],
    )
    assert resp.headers == [
        ("Location", "/x/1"),
        ("x-padded", "a b\tc"),
        ("x-latin", "caf\u00e9"),
        ("x-n", "3"),
    ]
