"""qmo's API client against a tiny local HTTP server: errors, and a rotated ServiceAccount token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from qmo.reconcile.kube import ApiError, Credentials, Kube, resource_of


async def serve(handler: web.Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def test_a_rotated_token_is_reread_after_a_401(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("rotated\n")
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer rotated":
            return web.json_response({"reason": "Unauthorized", "message": "expired"}, status=401)
        return web.json_response({"metadata": {"name": "m"}})

    async def scenario() -> None:
        runner, url = await serve(handler)
        kube = Kube(Credentials(server=url, token="expired", token_file=str(token_file)))
        try:
            body = await kube.get("QuantizedModel", "ns", "m")
            assert body == {"metadata": {"name": "m"}}
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(scenario())
    assert seen == ["Bearer expired", "Bearer rotated"]


def test_a_kind_the_server_does_not_serve_is_told_apart_from_a_missing_object() -> None:
    async def handler(request: web.Request) -> web.Response:
        if "keda.sh" in request.path:  # the API server's answer for a path it does not route: plain text
            return web.Response(text="404 page not found", status=404)
        return web.json_response({"reason": "NotFound", "message": "gone"}, status=404)

    async def scenario() -> None:
        runner, url = await serve(handler)
        kube = Kube(Credentials(server=url))
        try:
            with pytest.raises(ApiError) as unserved:
                await kube.list("ScaledObject", "ns")
            assert unserved.value.status == 404 and unserved.value.not_served
            with pytest.raises(ApiError) as missing:
                await kube.list("Job", "ns")
            assert missing.value.status == 404 and not missing.value.not_served
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(scenario())


def test_errors_carry_status_reason_and_message() -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/missing"):
            return web.json_response({"reason": "NotFound", "message": "gone"}, status=404)
        if request.method == "PATCH":
            details = {"causes": [{"field": "spec.recipe", "message": "spec.recipe is immutable"}]}
            body = {"reason": "Invalid", "message": "the server rejected our request", "details": details}
            return web.json_response(body, status=422)
        return web.json_response({"reason": "Forbidden", "message": "no rights"}, status=403)

    async def scenario() -> None:
        runner, url = await serve(handler)
        kube = Kube(Credentials(server=url))
        try:
            assert await kube.get("Job", "ns", "missing") is None
            with pytest.raises(ApiError) as error:
                await kube.list("Job", "ns")
            assert (error.value.status, error.value.reason, error.value.message) == (
                403,
                "Forbidden",
                "no rights",
            )
            assert not error.value.transient
            assert kube.requests["GET"] == 2
            with pytest.raises(ApiError) as invalid:
                await kube.patch("ModelArtifact", "ns", "a", {"spec": {}})
            # A 422's own message is generic; the field and the rule it broke are in its causes.
            assert (
                invalid.value.message
                == "the server rejected our request (spec.recipe: spec.recipe is immutable)"
            )
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(scenario())


def test_requests_are_counted_by_the_resource_they_address() -> None:
    assert resource_of("/apis/apps/v1/namespaces/ns/statefulsets/big-vllm-0") == "statefulsets"
    assert (
        resource_of("/apis/qmo.dev/v1alpha1/namespaces/ns/quantizedmodels/m/status")
        == "quantizedmodels/status"
    )
    # Whether an optional API (LeaderWorkerSet) is installed: a discovery read, not an unknown resource.
    assert resource_of("/apis/leaderworkerset.x-k8s.io/v1") == "discovery"
