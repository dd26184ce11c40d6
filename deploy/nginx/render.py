#!/usr/bin/env python3
"""Renders deploy/nginx/agent-console.conf.template into an nginx site, on standard output.

    python3 deploy/nginx/render.py --server-name console.example.com \\
        --web 10.0.0.10:8001 --web 10.0.0.10:8002 \\
        --gateway 10.0.0.10:8101 --gateway 10.0.0.10:8102 \\
        --certificate /etc/letsencrypt/live/console.example.com/fullchain.pem \\
        --certificate-key /etc/letsencrypt/live/console.example.com/privkey.pem \\
        > /etc/nginx/sites-available/agent-console.conf

Only the standard library: it runs with the system's python3, before the console is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "TEMPLATE", "render"]

TEMPLATE = Path(__file__).resolve().with_name("agent-console.conf.template")
# The console's MAX_REQUEST_BYTES default (config/settings.py); a test holds the two equal.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")
# A value goes into the configuration as one word: nothing that would end or open a directive.
_WORD = re.compile(r"[^\s;{}'\"#$]+")
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}|unix:/[^\s;{}'\"#$]+")


def _word(name: str, value: str) -> str:
    if not _WORD.fullmatch(value):
        raise ValueError(f"{name} must be one word without ; {{ }} quotes # or $, not {value!r}")
    return value


def _servers(name: str, addresses: list[str], max_fails: int, fail_timeout: str) -> str:
    if not addresses:
        raise ValueError(f"at least one {name} server is needed")
    lines = []
    for address in addresses:
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"a {name} server is host:port, [v6]:port or unix:/path: {address!r}")
        lines.append(f"    server {address} max_fails={max_fails} fail_timeout={fail_timeout};")
    return "\n".join(lines)


def render(
    *,
    server_name: str,
    web: list[str],
    gateway: list[str],
    certificate: str,
    certificate_key: str,
    listen: tuple[str, ...] = ("*", "[::]"),
    http_port: int = 80,
    https_port: int = 443,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_fails: int = 3,
    fail_timeout: str = "10s",
) -> str:
    """The site, with every placeholder of the template filled in."""
    for port in (http_port, https_port):
        if not 0 < port < 65536:
            raise ValueError(f"a port is 1-65535, not {port}")
    if max_request_bytes < 1024:  # the console's own minimum
        raise ValueError(f"max_request_bytes must be at least 1024, not {max_request_bytes}")
    if not re.fullmatch(r"[0-9]+[smh]?", fail_timeout):
        raise ValueError(f"fail_timeout is a duration such as 10s, not {fail_timeout!r}")
    for address in listen:
        if not re.fullmatch(r"\*|\[[0-9a-fA-F:.]+\]|[0-9.]+", address):
            raise ValueError(f"a listen address is *, an IPv4 address or [v6], not {address!r}")
    values = {
        "HTTP_LISTEN": "\n".join(f"    listen {a}:{http_port} default_server;" for a in listen),
        "HTTPS_LISTEN": "\n".join(
            f"    listen {a}:{https_port} ssl http2 default_server;" for a in listen
        ),
        "SERVER_NAME": " ".join(_word("server_name", n) for n in server_name.split()),
        "WEB_SERVERS": _servers("web", web, max_fails, fail_timeout),
        "GATEWAY_SERVERS": _servers("gateway", gateway, max_fails, fail_timeout),
        "TLS_CERTIFICATE": _word("certificate", certificate),
        "TLS_CERTIFICATE_KEY": _word("certificate_key", certificate_key),
        "HTTPS_PORT_SUFFIX": "" if https_port == 443 else f":{https_port}",
        "MAX_REQUEST_BYTES": str(max_request_bytes),
    }
    if not values["SERVER_NAME"]:
        raise ValueError("server_name is needed")

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ValueError(f"the template names an unknown placeholder: {match.group(0)}")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, TEMPLATE.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-name", required=True, help="the names the console is reached by")
    parser.add_argument("--web", action="append", required=True, help="a web process: host:port")
    parser.add_argument("--gateway", action="append", required=True, help="a gateway process")
    parser.add_argument("--certificate", required=True, help="the TLS certificate chain (PEM)")
    parser.add_argument("--certificate-key", required=True, help="its private key (PEM)")
    parser.add_argument(
        "--listen",
        action="append",
        help="an address to listen on: *, an IPv4 address or [v6] (default: * and [::])",
    )
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--https-port", type=int, default=443)
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="the console's MAX_REQUEST_BYTES (default %(default)s)",
    )
    parser.add_argument("--max-fails", type=int, default=3)
    parser.add_argument("--fail-timeout", default="10s")
    args = parser.parse_args(argv)
    try:
        options = {k: v for k, v in vars(args).items() if v is not None}
        site = render(**options | {"listen": tuple(args.listen or ("*", "[::]"))})
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write(site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
