"""Allow-lists of hosts: where a tenant-supplied URL may point a worker."""

from urllib.parse import urlsplit


def host_matches(host: str, pattern: str) -> bool:
    """``pattern`` is a host name, or ``*.`` + a suffix matching one or more leading labels."""
    host, pattern = host.lower().rstrip("."), pattern.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def url_allowed(url: str, patterns: list[str]) -> bool:
    """True when ``url`` is https (plain http only to a listed loopback host, for test fakes),
    carries no user info, and its host is on the list."""
    parts = urlsplit(url)
    host = parts.hostname
    if host is None or parts.username or parts.password:
        return False
    if parts.scheme != "https" and not (parts.scheme == "http" and host in _LOOPBACK):
        return False
    return any(host_matches(host, pattern) for pattern in patterns)
