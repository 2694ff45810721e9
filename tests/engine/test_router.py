"""Route matching: static beats parameters, 405 lists methods, conflicts are refused."""

from __future__ import annotations

import pytest

from engine.api.routes import MethodNotAllowed, RouteConflict, Router


def make() -> Router[str]:
    router: Router[str] = Router()
    router.add("GET", "/chat/rooms", "list")
    router.add("POST", "/chat/rooms", "create")
    router.add("GET", "/chat/rooms/:id", "get")
    router.add("GET", "/chat/rooms/new", "new-form")
    router.add("DELETE", "/chat/rooms/:id/members/:user", "kick")
    return router


def test_static_and_parameter_routes() -> None:
    router = make()
    assert router.match("GET", "/chat/rooms") == ("list", {})
    assert router.match("POST", "/chat/rooms/") == ("create", {})
    assert router.match("GET", "/chat/rooms/42") == ("get", {"id": "42"})
    assert router.match("GET", "/chat/rooms/new") == ("new-form", {})
    assert router.match("DELETE", "/chat/rooms/7/members/a%20b") == (
        "kick",
        {"id": "7", "user": "a b"},
    )


def test_head_falls_back_to_get_and_405_lists_methods() -> None:
    router = make()
    assert router.match("HEAD", "/chat/rooms/9") == ("get", {"id": "9"})
    found = router.match("PUT", "/chat/rooms")
    assert isinstance(found, MethodNotAllowed)
    assert found.allowed == ["GET", "POST"]


def test_unknown_paths() -> None:
    router = make()
    assert router.match("GET", "/chat") is None
    assert router.match("GET", "/chat/rooms/1/2") is None


def test_conflicts_are_refused() -> None:
    router = make()
    with pytest.raises(RouteConflict):
        router.add("GET", "/chat/rooms/:id", "again")
    with pytest.raises(RouteConflict):
        router.add("GET", "/chat/rooms/:other", "same shape, other name")
    with pytest.raises(RouteConflict):
        router.add("GET", "/chat/rooms", "again")


def test_remove_target_frees_the_route() -> None:
    router = make()
    router.remove_target("get")
    assert isinstance(router.match("GET", "/chat/rooms/3"), type(None))
    router.add("GET", "/chat/rooms/:id", "get2")
    assert router.match("GET", "/chat/rooms/3") == ("get2", {"id": "3"})
