"""The SSRF guard: which webhook URLs are refused, and the transport that connects only to the
addresses it vetted. No real DNS: every test injects its resolver."""

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest

from dispatcher.netguard import (
    HostNotFound,
    Resolver,
    UnsafeURL,
    check_url,
    guarded_client,
)
from tests.fakes.tls import self_signed

PUBLIC_V4, PUBLIC_V6 = "93.184.216.34", "2606:2800:220:1::1"


def _table(answers: dict[str, list[str]]) -> Resolver:
    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


def _everything_public(host: str, port: int) -> list[str]:
    """A resolver that would let any name through: refusals must come from the name itself."""
    return [PUBLIC_V4]


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"an address literal was resolved: {host}")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0X7F000001/", "loopback"),
        ("http://017700000001/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://127.0.0.1./", "loopback"),
        ("http://0/", "unspecified"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://localhost/", "this machine"),
        ("http://localhost./", "this machine"),
        ("http://LOCALHOST/", "this machine"),
        ("http://hooks.localhost/", "this machine"),
        ("http://localhost.localdomain/", "this machine"),
        ("http://%6c%6f%63%61%6c%68%6f%73%74/", "percent-encoded"),
        ("http://%31%32%37.0.0.1/", "percent-encoded"),
        ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", "this machine"),
        ("http://１２７.０.０.１/", "loopback"),  # noqa: RUF001 - fullwidth, on purpose
        ("http://127。0。0。1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::]/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[::127.0.0.1]/", "loopback"),
        ("http://[::8.8.8.8]/", "reserved"),
        ("http://[64:ff9b::10.0.0.1]/", "private"),
        ("http://[64:ff9b::7f00:1]/", "loopback"),
        ("http://[2002:a00:1::1]/", "private"),
        ("http://[2002:7f00:1::]/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://[fc00::1]/", "unique-local"),
        ("http://[fd12:3456:789a::1]/", "unique-local"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fec0::1]/", "site-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://192.0.2.1/", "private"),
        ("http://[2001:db8::1]/", "private"),
    ],
)
def test_non_public_hosts_are_refused_in_every_spelling(url: str, why: str) -> None:
    with pytest.raises(UnsafeURL, match=why):
        check_url(url, allow_private=False, resolve=_everything_public)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("ftp://example.com/", "scheme 'ftp'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("example.com/hook", "scheme ''"),
        ("http://user:pw@example.com/", "user info"),
        ("http://example.com@127.0.0.1/", "user info"),
        ("http://@example.com/", "user info"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com\t/", "whitespace"),
        ("http://example.com\\@127.0.0.1/", "backslash"),
        ("http:///hook", "no host"),
        ("http://example..com/", "not a valid host name"),
        ("http://exa*mple.com/", "not a valid host name"),
        ("http://[::1/", "not a valid URL"),
        ("http://[v1.fe]/", "not an IPv6 address"),
        ("http://[fe80::1%25eth0]/", "IPv6 zone"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://1.2.3.4.5/", "not an IPv4 address"),
        ("http://08.0.0.1/", "not an IPv4 address"),
        ("http://256.0.0.1/", "not an IPv4 address"),
        ("http://example.0x/", "not an IPv4 address"),
        ("http://☃.example/", "international domain name"),
        ("http://exa\u200bmple.com/", "control characters"),
        ("http://ex\u0000ample.com/", "control characters"),
    ],
)
def test_malformed_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeURL, match=why):
        check_url(url, allow_private=False, resolve=_everything_public)


@pytest.mark.parametrize("answers", [[PUBLIC_V4, "10.0.0.5"], ["10.0.0.5", PUBLIC_V4]])
def test_a_name_with_any_private_address_is_refused(answers: list[str]) -> None:
    resolve = _table({"hooks.example.com": answers})
    with pytest.raises(UnsafeURL, match=r"hooks\.example\.com resolves to 10\.0\.0\.5, a private"):
        check_url("https://hooks.example.com/", allow_private=False, resolve=resolve)


@pytest.mark.parametrize(
    "url",
    [
        f"https://{PUBLIC_V4}/hook",
        f"https://[{PUBLIC_V6}]/hook",
        "https://[::ffff:93.184.216.34]/",
        "https://[64:ff9b::93.184.216.34]/",
        "https://[2002:5db8:d822::1]/",
    ],
)
def test_public_address_literals_are_accepted_without_dns(url: str) -> None:
    assert len(check_url(url, allow_private=False, resolve=_no_dns)) == 1


def test_a_public_name_returns_every_vetted_address_once() -> None:
    resolve = _table({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6, PUBLIC_V4]})
    vetted = check_url("https://hooks.example.com/h?x=1", allow_private=False, resolve=resolve)
    assert vetted == [ip_address(PUBLIC_V4), ip_address(PUBLIC_V6)]


def test_the_resolver_gets_the_encoded_name_and_the_default_port() -> None:
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [PUBLIC_V4]

    check_url("https://Bücher.Example./", allow_private=False, resolve=resolve)
    check_url("http://hooks.example.com:8443/", allow_private=False, resolve=resolve)
    assert calls == [("xn--bcher-kva.example", 443), ("hooks.example.com", 8443)]


def test_a_name_that_does_not_resolve_is_host_not_found() -> None:
    with pytest.raises(HostNotFound, match=r"nowhere\.example does not resolve"):
        check_url("https://nowhere.example/", allow_private=False, resolve=_table({}))


def test_a_name_without_addresses_is_host_not_found() -> None:
    resolve = _table({"empty.example": []})
    with pytest.raises(HostNotFound, match="has no address"):
        check_url("https://empty.example/", allow_private=False, resolve=resolve)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/hook", "http://localhost:9000/", "http://[::1]/"]
)
def test_allow_private_lets_loopback_through(url: str) -> None:
    resolve = _table({"localhost": ["127.0.0.1"]})
    assert check_url(url, allow_private=True, resolve=resolve)[0].is_loopback


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme"),
        ("http://user:pw@127.0.0.1/", "user info"),
    ],
)
def test_allow_private_still_refuses_other_schemes_and_user_info(url: str, why: str) -> None:
    with pytest.raises(UnsafeURL, match=why):
        check_url(url, allow_private=True, resolve=_no_dns)


# The transport: pinned connections, checked against loopback receivers.

NO_CONTENT = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
REDIRECT = (
    b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


@dataclass
class Receiver:
    port: int = 0
    heads: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)

    def record_server_name(
        self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        self.server_names.append(name)


@contextlib.asynccontextmanager
async def _receiver(
    seen: Receiver, reply: bytes, tls: ssl.SSLContext | None
) -> AsyncIterator[None]:
    """An HTTP server on 127.0.0.1 that records request heads and TLS server names."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            seen.heads.append((await reader.readuntil(b"\r\n\r\n")).decode().lower())
            writer.write(reply)
            await writer.drain()
        writer.close()

    if tls is not None:
        tls.sni_callback = seen.record_server_name
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    async with server:
        seen.port = server.sockets[0].getsockname()[1]
        yield


def _deliver(
    seen: Receiver,
    url: str,
    resolve: Resolver,
    *,
    allow_private: bool = True,
    reply: bytes = NO_CONTENT,
    tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
) -> httpx.Response:
    """POST to ``url`` (``{port}`` is the receiver's) through a guarded client."""

    async def scenario() -> httpx.Response:
        async with (
            _receiver(seen, reply, tls[0] if tls else None),
            guarded_client(
                allow_private=allow_private,
                timeout=5,
                resolve=resolve,
                verify=tls[1] if tls else True,
            ) as client,
        ):
            return await client.post(url.format(port=seen.port), content=b"{}")

    return asyncio.run(scenario())


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for localhost and 127.0.0.1, and a client trusting it."""
    cert = self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert.certfile, cert.keyfile)
    return server, cert.client_context()


def test_transport_connects_to_the_vetted_address_not_what_the_name_resolves_to() -> None:
    seen = Receiver()
    resolve = _table({"hooks.example.test": ["127.0.0.1"]})  # .test never resolves for real
    response = _deliver(seen, "http://hooks.example.test:{port}/hook", resolve)
    assert response.status_code == 204
    assert f"host: hooks.example.test:{seen.port}\r\n" in seen.heads[0]


def test_transport_tries_each_vetted_address_in_turn() -> None:
    seen = Receiver()
    resolve = _table({"hooks.example.test": ["::1", "127.0.0.1"]})  # the receiver is on v4 only
    response = _deliver(seen, "http://hooks.example.test:{port}/", resolve)
    assert response.status_code == 204


def test_transport_refuses_a_private_address_before_connecting() -> None:
    seen = Receiver()
    resolve = _table({"hooks.example.test": ["127.0.0.1"]})
    with pytest.raises(UnsafeURL, match="loopback"):
        _deliver(seen, "http://hooks.example.test:{port}/", resolve, allow_private=False)
    assert seen.heads == []


def test_transport_reports_an_unresolvable_name_as_a_connect_error() -> None:
    with pytest.raises(httpx.ConnectError, match="does not resolve"):
        _deliver(Receiver(), "http://nowhere.example.test:{port}/", _table({}))


def test_transport_sends_the_url_name_as_tls_server_name(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    seen = Receiver()
    response = _deliver(
        seen, "https://localhost:{port}/", _table({"localhost": ["127.0.0.1"]}), tls=tls
    )
    assert response.status_code == 204
    assert seen.server_names == ["localhost"]


def test_transport_checks_the_certificate_against_the_name_not_the_pinned_address(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    # The certificate covers 127.0.0.1, the pinned address, but not the URL's name.
    resolve = _table({"hooks.example.test": ["127.0.0.1"]})
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _deliver(Receiver(), "https://hooks.example.test:{port}/", resolve, tls=tls)


def test_guarded_client_does_not_follow_redirects() -> None:
    seen = Receiver()
    response = _deliver(seen, "http://127.0.0.1:{port}/", _no_dns, reply=REDIRECT)
    assert response.status_code == 302
    assert len(seen.heads) == 1
