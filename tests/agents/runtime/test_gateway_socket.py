"""The runtime's way to an ``https`` gateway through the sandbox's gateway socket: TLS over the
socket (whose far end is the gateway's TCP address, relayed byte for byte), the certificate
checked against the gateway's name; and the machine's CA certificates inside the sandbox."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiohttp import ClientConnectorError, ClientSession, web

from agents import sandbox
from agents.runtime.server import GatewaySocketConnector
from tests.deploy.test_nginx import certificate


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"secure": request.secure, "host": request.host})


async def _served(socket_path: Path, tls: ssl.SSLContext | None) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/gateway/v1/ping", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(socket_path), ssl_context=tls).start()
    return runner


def _server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    return tls


async def _get(socket_path: Path, url: str, trusted: ssl.SSLContext) -> dict:
    connector = GatewaySocketConnector(str(socket_path), trusted)
    async with ClientSession(connector=connector) as client, client.get(url) as answer:
        return await answer.json()


def test_an_https_gateway_is_spoken_in_tls_over_the_socket(tmp_path):
    cert, key = certificate(tmp_path)
    socket_path = tmp_path / "gateway.sock"

    async def scenario() -> dict:
        runner = await _served(socket_path, _server_tls(cert, key))
        try:
            trusted = ssl.create_default_context(cafile=str(cert))
            return await _get(socket_path, "https://localhost/gateway/v1/ping", trusted)
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == {"secure": True, "host": "localhost"}


def test_a_gateway_whose_certificate_is_not_trusted_is_unreachable(tmp_path):
    cert, key = certificate(tmp_path)
    socket_path = tmp_path / "gateway.sock"

    async def scenario() -> None:
        runner = await _served(socket_path, _server_tls(cert, key))
        try:
            with pytest.raises(ClientConnectorError):  # the runtime's gateway_unreachable
                await _get(
                    socket_path, "https://localhost/gateway/v1/ping", ssl.create_default_context()
                )
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_an_http_gateway_is_spoken_plainly_over_the_socket(tmp_path):
    socket_path = tmp_path / "gateway.sock"

    async def scenario() -> dict:
        runner = await _served(socket_path, None)
        try:
            return await _get(
                socket_path, "http://console.test/gateway/v1/ping", ssl.create_default_context()
            )
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == {"secure": False, "host": "console.test"}


def test_the_sandbox_reads_the_machines_ca_certificates():
    bundle = ssl.get_default_verify_paths().cafile
    if not bundle or not Path(bundle).is_file():
        pytest.skip("this machine has no CA bundle at OpenSSL's default path")
    assert (bundle, bundle) in sandbox._runtime_files()
