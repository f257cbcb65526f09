"""SSRF guard for tenant-supplied URLs (webhooks): which URLs we may call, and a transport that
connects only to the addresses that were vetted.

``check_url`` refuses what is not plain ``http(s)://host[:port]/...`` (other schemes, user info,
whitespace, percent-encoded or malformed hosts), reads numeric hosts the way ``inet_aton`` and
browsers do (``2130706433``, ``0x7f000001``, ``0177.1``, ``127.1`` and ``0`` are IPv4), maps
international names by UTS 46 (``ⓛⓞⓒⓐⓛⓗⓞⓢⓣ`` is ``localhost``), refuses ``localhost`` names, and
resolves the rest, refusing when ANY address is not public. It returns the vetted addresses.

Checking a name and then letting the client resolve it again proves nothing: DNS can answer
differently at connect time (rebinding). So the delivery client must connect to the vetted
addresses only. ``GuardedTransport`` does that for httpx: it runs ``check_url`` on every request
it sends and connects to exactly the addresses the check returned, while the Host header, TLS SNI
and certificate check keep the URL's name. ``guarded_client`` builds an ``AsyncClient`` around it
with ``trust_env=False`` (a proxy from the environment would bypass the transport) and
``follow_redirects=False``. A check at submission time (to answer 4xx early) does not replace it.

Redirects are never followed: a 3xx is a failed delivery, and tests should assert on the 3xx
response, not on its target. (Were one followed, the transport would still check the new URL,
since it checks every request.)

``allow_private=True`` (loopback test receivers) skips only the address-class check; the scheme,
user-info and host-syntax checks always run.

Errors::

    ValueError
     └── UnsafeURL      never deliver here (scheme, user info, host, address class): permanent
    OSError
     └── HostNotFound   the name has no address now: transient, retry on the schedule
                        (GuardedTransport raises it as httpx.ConnectError)
"""

import contextlib
import functools
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import SplitResult, urlsplit

import anyio.to_thread
import httpcore
import httpx
import idna

IPAddress = IPv4Address | IPv6Address
#: ``(host, port) -> addresses``; the default is the system's ``getaddrinfo``.
Resolver = Callable[[str, int], Sequence[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_NAT64 = IPv6Network("64:ff9b::/96")
_CGNAT = IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = IPv6Network("fc00::/7")
_BROADCAST = IPv4Address("255.255.255.255")


class UnsafeURL(ValueError):
    """A URL we never deliver to; the message says why."""


class HostNotFound(OSError):
    """The URL's host name has no address right now."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (``getaddrinfo``; blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(
    url: str, *, allow_private: bool, resolve: Resolver = resolve_host
) -> list[IPAddress]:
    """The addresses ``url`` may be delivered to; ``UnsafeURL`` or ``HostNotFound`` otherwise."""
    parts, port = _split(url)
    host = _host(parts)
    if isinstance(host, str):
        if _is_this_machine(host) and not allow_private:
            raise UnsafeURL(f"host {host} is this machine; webhooks go to public addresses only")
        addresses = _resolve(host, port, resolve)
    else:
        addresses = [host]
    if not allow_private:
        _refuse_non_public(str(host), addresses)
    return addresses


def _split(url: str) -> tuple[SplitResult, int]:
    """The URL's parts and port, once its scheme, user info and characters are allowed."""
    if "\\" in url or any(char.isspace() or not char.isprintable() for char in url):
        raise UnsafeURL("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURL(f"scheme {parts.scheme!r} is not allowed; only http and https are")
    if "@" in parts.netloc:
        raise UnsafeURL("URL carries user info (user:password@); it is not allowed")
    if not parts.hostname:
        raise UnsafeURL("URL has no host")
    return parts, _DEFAULT_PORTS[scheme] if port is None else port


def _is_this_machine(name: str) -> bool:
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def _host(parts: SplitResult) -> str | IPAddress:
    """The host as an address when it is one (in any spelling), else as a canonical name."""
    host = parts.hostname or ""
    if "%" in host:
        raise UnsafeURL(f"host {host} is percent-encoded or carries an IPv6 zone")
    if "[" in parts.netloc:
        try:
            return IPv6Address(host)
        except ValueError:
            raise UnsafeURL(f"host [{host}] is not an IPv6 address") from None
    name = _ascii_name(host).removesuffix(".")
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise UnsafeURL(f"host {host} is not a valid host name")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return name
    address = _inet_aton(labels)
    if address is None:
        raise UnsafeURL(f"host {host} looks numeric but is not an IPv4 address")
    return address


def _ascii_name(host: str) -> str:
    """``host`` with international names mapped (UTS 46) and encoded, as browsers do."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise UnsafeURL(f"host {host} is not a valid international domain name") from None


def _inet_aton(labels: list[str]) -> IPv4Address | None:
    """IPv4 as ``inet_aton`` and WHATWG URLs read it: 1 to 4 parts, each decimal, 0x-hex or
    0-octal, the last one filling the remaining bytes (``127.1`` is 127.0.0.1)."""
    try:
        numbers = [_ipv4_part(label) for label in labels]
    except ValueError:
        return None
    *head, last = numbers
    if len(numbers) > 4 or any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last
    return IPv4Address(value)


def _ipv4_part(label: str) -> int:
    if re.fullmatch(r"0x[0-9a-f]+", label):
        return int(label, 16)
    if re.fullmatch(r"0[0-7]+", label):
        return int(label, 8)
    if re.fullmatch(r"0|[1-9][0-9]*", label):
        return int(label)
    raise ValueError(label)


def _resolve(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        answers = resolve(host, port)
    except OSError as exc:
        raise HostNotFound(f"host {host} does not resolve: {exc}") from exc
    if not answers:
        raise HostNotFound(f"host {host} has no address")
    return list(dict.fromkeys(ip_address(answer) for answer in answers))


def _refuse_non_public(host: str, addresses: Iterable[IPAddress]) -> None:
    for address in addresses:
        reason = _refusal(address)
        if reason is None:
            continue
        where = f"host {host} is" if host == str(address) else f"host {host} resolves to {address},"
        raise UnsafeURL(f"{where} a {reason} address; webhooks go to public addresses only")


def _refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused, or None when it is public. IPv4-mapped and NAT64 addresses reach
    the IPv4 address inside, so that decides; 6to4 and IPv4-compatible ones must pass both."""
    if isinstance(ip, IPv6Address):
        if (reached := _translated(ip)) is not None:
            return _inner_class(reached)
        if (carried := _carried(ip)) is not None:
            return _inner_class(carried) or _address_class(ip)
    return _address_class(ip)


def _inner_class(inner: IPv4Address) -> str | None:
    reason = _address_class(inner)
    return None if reason is None else f"{reason} (IPv4 {inner} inside IPv6)"


def _translated(ip: IPv6Address) -> IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None


def _carried(ip: IPv6Address) -> IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    compatible = int(ip) >> 32 == 0 and int(ip) > 1  # ::a.b.c.d, but not :: or ::1
    return IPv4Address(int(ip)) if compatible else None


_CLASSES: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("loopback", lambda ip: ip.is_loopback),
    ("unspecified", lambda ip: ip.is_unspecified),
    ("link-local", lambda ip: ip.is_link_local),  # 169.254.169.254 (cloud metadata) among them
    ("multicast", lambda ip: ip.is_multicast),
    ("broadcast", lambda ip: ip == _BROADCAST),
    ("shared (CGNAT)", lambda ip: ip in _CGNAT),
    ("unique-local", lambda ip: ip in _UNIQUE_LOCAL),
    ("site-local", lambda ip: isinstance(ip, IPv6Address) and ip.is_site_local),
    ("reserved", lambda ip: ip.is_reserved),
    ("private", lambda ip: ip.is_private),
    ("non-public", lambda ip: not ip.is_global),
)


def _address_class(ip: IPAddress) -> str | None:
    return next((name for name, member in _CLASSES if member(ip)), None)


_vetted: ContextVar[tuple[IPAddress, ...]] = ContextVar("netguard_vetted", default=())


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the addresses vetted for the current request, whatever ``host`` is."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        vetted = _vetted.get()
        if not vetted:
            raise httpcore.ConnectError(f"no vetted address for {host}; use GuardedTransport")
        connect = functools.partial(
            self._inner.connect_tcp,
            port=port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )
        *others, last = vetted
        for address in others:
            with contextlib.suppress(httpcore.ConnectError, httpcore.ConnectTimeout):
                return await connect(str(address))
        return await connect(str(last))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that runs ``check_url`` on every request and connects only to the
    addresses it vetted; Host, SNI and the certificate check keep the URL's name."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolve: Resolver = resolve_host,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = _LIMITS,
    ) -> None:
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=context, limits=limits, trust_env=False)
        # httpx takes no network backend yet (encode/httpx#3749): swap in a pool with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(),
        )
        self._check = functools.partial(check_url, allow_private=allow_private, resolve=resolve)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            vetted = await anyio.to_thread.run_sync(self._check, str(request.url))
        except HostNotFound as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        token = _vetted.set(tuple(vetted))
        try:
            return await super().handle_async_request(request)
        finally:
            _vetted.reset(token)


def guarded_client(
    *,
    allow_private: bool,
    timeout: float,
    resolve: Resolver = resolve_host,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """An ``AsyncClient`` for tenant URLs: vetted and pinned, no redirects, no proxy from env."""
    transport = GuardedTransport(allow_private=allow_private, resolve=resolve, verify=verify)
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )
