"""The download stage's judgment: fetch the images of URL lists (LAION/img2dataset, MMC4/OBELICS) safely.

Sample whose `images[i]` hold only a `uri="http(s)://…"` → the same Sample with `bytes` filled (`uri` kept for
lineage), or a Verdict that drops it with one reason code per kind of failure (`REASONS`). It runs after read and
before decode; decode then validates what was fetched like any other image.

    downloader = Downloader(DownloadConfig())            # one per worker: a connection pool and a thread pool
    verdicts = download_samples(samples, downloader)     # [(sample, Verdict | None)], images fetched concurrently

What it does, as img2dataset does: bounded concurrency, a timeout, retries with exponential backoff on 5xx, 429,
timeouts and connection errors, a redirect limit, a byte cap (the body is streamed and cut at the cap), content
sniffing (an image's magic bytes, never the Content-Type header alone), `X-Robots-Tag` opt-outs (`noai`,
`noimageai`, `noindex`, `noimageindex`, `none`; a `token: directive` line counts when its token is ours) and a
configurable user agent.

A URL list is untrusted input, run on cloud workers (issue 24): by default only public unicast addresses are
contacted. The downloader resolves each host itself, refuses the address classes of `address_category`
(loopback, private, link-local, CGNAT, multicast, unspecified, reserved, and IPv4-mapped/embedded forms of them),
and connects to the address it checked: the check lives in the HTTP client's network backend (`_CheckedBackend`),
so no second lookup can answer differently (DNS rebinding), and TLS still sends the host name for SNI and
certificate verification. Literal hosts are read as the C resolver reads them (`inet_aton`: `2130706433`,
`0177.0.0.1`, `0x7f.1`, `127.1` are all 127.0.0.1), whatever a URL parser makes of them. Redirects are followed
here, hop by hop, each checked the same way; schemes other than http/https are refused; no cookie is kept, no
credential follows a redirect to another origin, and proxy settings from the environment are ignored.

Interleaved documents (images placed by `segments`): a failed image is removed with its segment and the
document kept while at least one image remains (`DownloadConfig.partial_documents`); the removals are counted in
the `download_images_removed` / `download_failures` signals. Any other record is rejected when one of its images
fails (a chat turn's `<image>` placeholders could no longer be matched to images).
"""
from __future__ import annotations

import http.cookiejar
import ipaddress
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

from vlmloom.curation.base import Verdict
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import kind_of
from vlmloom.schemas.records import Sample, Segment

STAGE = "download"
# One code per kind of failure (`http_<status>` stands for every HTTP status, e.g. http_404, http_503).
REASONS = ("http_<status>", "timeout", "too_large", "opted_out", "not_an_image", "dns_error", "connection_error",
           "too_many_redirects", "blocked_address", "blocked_scheme", "invalid_url")
RETRYABLE = frozenset({"timeout", "connection_error", "http_429"})  # and every http_5xx
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
OK_STATUSES = frozenset({200, 203})
DEFAULT_OPT_OUT = ("noai", "noimageai", "noindex", "noimageindex", "none")  # img2dataset's four, and `none`
# Address classes `allow_private_addresses: true` lets through; link-local (169.254/16: cloud metadata services),
# multicast, unspecified and reserved ranges need an explicit `allowed_networks` entry.
PRIVATE_CATEGORIES = frozenset({"loopback", "private", "cgnat"})
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
_SNIFF_BYTES = 32  # enough for every magic number below
_AGENT = re.compile(r"[a-z0-9_.-]+")  # a user-agent token: no spaces, no commas
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


@dataclass(frozen=True, kw_only=True)
class DownloadConfig:
    """`download:` in the job YAML."""
    enabled: bool | None = None  # None: on when an input reads a URL list; true: always; false: never
    concurrency: int = 16  # images fetched at once per worker (threads sharing one connection pool)
    batch_size: int = 64  # samples handed to one worker call; their images are fetched together
    timeout_s: float = 10.0  # connect timeout, and the longest wait for any read
    max_seconds: float = 60.0  # wall time for one image, all hops and retries: a trickling server is cut off
    retries: int = 2  # further attempts after a 5xx, 429, timeout or connection error; 0 disables
    backoff_s: float = 0.5  # wait before the first retry; doubles for each further one
    max_redirects: int = 5  # hops followed, each checked like the first URL; more → too_many_redirects
    max_bytes: int = 32 * 2**20  # byte cap: the body is streamed and abandoned past it (too_large)
    opt_out_directives: list[str] = field(default_factory=lambda: list(DEFAULT_OPT_OUT))  # [] ignores X-Robots-Tag
    user_agent: str = "vlmloom/1.0 (image-text dataset curation; honours X-Robots-Tag noai)"  # User-Agent header
    user_agent_token: str = "vlmloom"  # an `X-Robots-Tag: <token>: noai` line applies to us iff its token is this
    partial_documents: bool = True  # interleaved documents keep their other images when one fails; false rejects
    allow_private_addresses: bool = False  # also loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), CGNAT
    allowed_networks: list[str] = field(default_factory=list)  # CIDRs contacted whatever their class (intranet mirrors)

    def validate(self) -> None:
        for name in ("concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"download.{name} ({getattr(self, name)}) must be >= 1")
        for name in ("timeout_s", "max_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"download.{name} ({getattr(self, name)}) must be > 0")
        if self.retries < 0 or self.backoff_s < 0 or self.max_redirects < 0:
            raise ConfigError("download.retries, download.backoff_s and download.max_redirects must be >= 0")
        if self.max_bytes < 1:
            raise ConfigError(f"download.max_bytes ({self.max_bytes}) must be >= 1")
        for cidr in self.allowed_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"download.allowed_networks: {cidr!r} is not a network; write e.g. "
                                  f"10.20.0.0/16 or fd00:1::/64") from None


# --- which addresses may be contacted ----------------------------------------------------------------------------
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_CLASSES = [(ipaddress.IPv4Network(net), category) for net, category in [
    ("0.0.0.0/8", "unspecified"),  # "this network": connecting to 0.0.0.0 reaches the local host on Linux
    ("10.0.0.0/8", "private"), ("100.64.0.0/10", "cgnat"), ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"), ("172.16.0.0/12", "private"), ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"), ("192.88.99.0/24", "reserved"), ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"), ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),  # 240/4 includes the broadcast address
]]
_V6_CLASSES = [(ipaddress.IPv6Network(net), category) for net, category in [
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("64:ff9b:1::/48", "private"),
    ("100::/64", "reserved"), ("2001::/23", "reserved"), ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"), ("5f00::/16", "reserved"), ("fc00::/7", "private"),
    ("fe80::/10", "link_local"), ("fec0::/10", "private"), ("ff00::/8", "multicast"),
]]
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def unwrap(address: Address) -> Address:
    """The IPv4 address an IPv6 form stands for (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d, 6to4
    2002:aabb:ccdd::), else the address itself: the class of the IPv4 address inside is what counts."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def address_category(address: Address) -> str | None:
    """The non-public class of an address (`loopback`, `private`, `link_local`, `cgnat`, `multicast`,
    `unspecified`, `documentation`, `reserved`), or None for a public unicast address."""
    address = unwrap(address)
    table = _V4_CLASSES if isinstance(address, ipaddress.IPv4Address) else _V6_CLASSES
    for network, category in table:
        if address in network:
            return category
    if isinstance(address, ipaddress.IPv6Address) and address not in _V6_GLOBAL_UNICAST:
        return "reserved"  # IPv4-compatible ::a.b.c.d, and everything IANA has not allocated for unicast
    return None


def literal_address(host: str) -> Address | None:
    """The address a literal host names, read as the C resolver reads it, or None for a name.

    URL parsers disagree on `2130706433`, `0177.0.0.1`, `0x7f.1` or `127.1` (httpx refuses some, passes others on as
    names); `getaddrinfo` hands all of them to `inet_aton`, which reads them as 127.0.0.1. What counts is what the
    connection would use, so `inet_aton` decides here too."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone (`fe80::1%eth0`) names an interface
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


class BlockedAddress(Exception):
    """The host is, or resolves to, an address the policy refuses."""


class DnsError(Exception):
    """The host name did not resolve."""


Resolver = Callable[[str, int], list[str]]  # (host, port) → addresses as strings; raises DnsError


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DnsError(f"{host}: {exc}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


class AddressPolicy:
    """Which resolved addresses may be contacted: public unicast, plus the opt-ins of DownloadConfig."""

    def __init__(self, config: DownloadConfig, resolver: Resolver | None = None):
        self._allow_private = config.allow_private_addresses
        self._allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in config.allowed_networks]
        self._resolve = resolver or system_resolver

    def refusal(self, address: Address) -> str | None:
        """Why `address` may not be contacted (its class), or None."""
        if any(address in net or unwrap(address) in net for net in self._allowed):
            return None
        category = address_category(address)
        if category is None or (self._allow_private and category in PRIVATE_CATEGORIES):
            return None
        return category

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, every one checked; raises BlockedAddress when any address of
        the name is refused (a name that also points inward is not trusted for its other addresses), DnsError
        when it does not resolve."""
        literal = literal_address(host)
        if literal is not None:
            found = [literal]
        else:
            found = []
            for text in self._resolve(host, port):
                try:
                    found.append(ipaddress.ip_address(text.split("%", 1)[0]))
                except ValueError:
                    raise DnsError(f"{host}: the resolver answered {text!r}, not an address") from None
            if not found:
                raise DnsError(f"{host}: no address")
        for address in found:
            category = self.refusal(address)
            if category is not None:
                target = unwrap(address)
                shown = host if str(target) == host else f"{host} → {target}"
                raise BlockedAddress(f"{shown} is {category.replace('_', '-')}")
        # An IPv4-mapped address is dialled as the IPv4 address it is; NAT64/6to4 ones stay IPv6 (their gateway).
        return [str(getattr(address, "ipv4_mapped", None) or address) for address in found]


class _CheckedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy checked: the client asks it for
    (host name, port); it resolves once, checks, and opens the socket to the checked address itself. TLS is
    started afterwards by httpcore with `server_hostname` = the URL's host, so SNI and certificate verification
    are for the name, not the address."""

    def __init__(self, policy: AddressPolicy):
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error: Exception | None = None
        for address in self._policy.resolve(host, port):
            try:
                return self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                               socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:  # try the name's next address
                error = exc
        raise error  # resolve() returns at least one address

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise BlockedAddress("unix sockets are never used by the downloader")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's transport over `_CheckedBackend` (HTTPTransport takes no backend argument: its pool is rebuilt
    with the same TLS context, limits and the checked backend)."""

    def __init__(self, policy: AddressPolicy, limits: httpx.Limits):
        super().__init__(limits=limits, trust_env=False)
        ssl_context = self._pool._ssl_context  # the verified default context HTTPTransport built
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(policy))


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Cookies are never stored, so none travels to another request or host."""

    def set_ok(self, cookie, request):
        return False

    def return_ok(self, cookie, request):
        return False


# --- fetching ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    url: str
    data: bytes | None = None
    reason: str | None = None  # one of REASONS when data is None
    detail: str = ""
    attempts: int = 1


class _Failure(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def sniff_image(head: bytes) -> str | None:
    """The image format its magic bytes announce (the raster formats decode accepts), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"mif1", b"msf1"):
        return "avif"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix"):
        return "heif"  # an image, though decode does not read it (unidentified_image there, not not_an_image here)
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "jpeg2000"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ico"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "ppm"
    return None


def opted_out(headers: httpx.Headers, directives: Iterable[str], token: str) -> str | None:
    """The X-Robots-Tag directive that forbids this use, or None. A value is `directive, …` (for every agent)
    or `agent: directive, …` (only for that agent), as img2dataset reads it; directives that carry a value of
    their own (`unavailable_after: <date>`, `max-image-preview:large`) are not mistaken for an agent."""
    refused = {d.lower() for d in directives}
    if not refused:
        return None
    for value in headers.get_list("x-robots-tag"):
        head, colon, tail = value.partition(":")
        agent = head.strip().lower()
        if colon and _AGENT.fullmatch(agent) and agent not in _VALUED_DIRECTIVES:
            if agent != token.lower():
                continue
            value = tail
        for directive in value.split(","):
            name = directive.split(":", 1)[0].strip().lower()
            if name in refused:
                return name
    return None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


class Downloader:
    """Fetches URLs under a DownloadConfig: one httpx client (a pool of `concurrency` connections) and one thread
    pool per instance; build it once per worker (DoFn.setup) and `close()` it at teardown."""

    def __init__(self, config: DownloadConfig, resolver: Resolver | None = None):
        self.config = config
        self.policy = AddressPolicy(config, resolver)
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        self._client = httpx.Client(
            transport=_CheckedTransport(self.policy, limits), trust_env=False, follow_redirects=False,
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            headers={"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.5",
                     # an image is sent as it is; identity also keeps a compressed bomb off the wire
                     "Accept-Encoding": "identity"})
        self._pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="download")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def fetch_many(self, urls: list[str]) -> dict[str, Fetched]:
        """url → Fetched for each distinct URL, `concurrency` at a time."""
        unique = list(dict.fromkeys(urls))
        return dict(zip(unique, self._pool.map(self.fetch, unique)))

    def fetch(self, url: str) -> Fetched:
        """One URL, with retries; never raises for what the network or the server does."""
        config = self.config
        deadline = time.monotonic() + config.max_seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                return Fetched(url, self._fetch_once(url, deadline), attempts=attempt)
            except _Failure as failure:
                retry = failure.reason in RETRYABLE or failure.reason.startswith("http_5")
                delay = config.backoff_s * 2 ** (attempt - 1)
                if not retry or attempt > config.retries or time.monotonic() + delay >= deadline:
                    return Fetched(url, None, failure.reason, failure.detail, attempt)
                time.sleep(delay)

    def _fetch_once(self, url: str, deadline: float) -> bytes:
        first = current = self._checked_url(url)
        for hop in range(self.config.max_redirects + 1):
            response = self._send(current, first, deadline)
            try:
                status = response.status_code
                location = response.headers.get("location")
                if status in REDIRECT_STATUSES and location:
                    current = self._redirect_target(current, location, first)
                    continue
                if status not in OK_STATUSES:
                    raise _Failure(f"http_{status}", f"{current}: HTTP {status}")
                directive = opted_out(response.headers, self.config.opt_out_directives, self.config.user_agent_token)
                if directive:
                    raise _Failure("opted_out", f"{current}: X-Robots-Tag {directive}")
                return self._read_body(response, current, deadline)
            finally:
                response.close()
        raise _Failure("too_many_redirects", f"{url}: more than {self.config.max_redirects} redirects")

    def _checked_url(self, url: str) -> httpx.URL:
        """The URL, parsed, when its scheme is http(s) and httpx can parse it.

        The address check that counts runs at connect time, on what httpx's parser made of the URL
        (`_CheckedBackend`), so a parser difference cannot open a way round it. A literal host httpx refuses
        (`0177.0.0.1`, which getaddrinfo would dial as 127.0.0.1) is named for the address it is."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in ("http", "https"):
            raise _Failure("blocked_scheme", f"{url[:200]}: scheme {scheme or '(none)'!r}, only http and https")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            host = urlsplit(url).hostname or ""
            literal = literal_address(host) if host else None
            category = self.policy.refusal(literal) if literal is not None else None
            if category is not None:
                raise _Failure("blocked_address", f"{url[:200]}: {host} is {category.replace('_', '-')}") from None
            raise _Failure("invalid_url", f"{url[:200]}: {exc}") from None
        if not parsed.host:
            raise _Failure("invalid_url", f"{url[:200]}: no host")
        return parsed

    def _redirect_target(self, current: httpx.URL, location: str, first: httpx.URL) -> httpx.URL:
        try:
            target = current.join(location)
        except httpx.InvalidURL as exc:
            raise _Failure("invalid_url", f"{current}: redirect to {location!r}: {exc}") from None
        target = self._checked_url(str(target))
        if first.userinfo and not target.userinfo and _origin(target) == _origin(first):
            target = target.copy_with(username=first.username, password=first.password)  # same origin: keep it
        return target

    def _send(self, url: httpx.URL, first: httpx.URL, deadline: float) -> httpx.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failure("timeout", f"{url}: over max_seconds {self.config.max_seconds}")
        timeout = httpx.Timeout(min(self.config.timeout_s, remaining))
        try:
            # A fresh request per hop: only the client's own headers and this URL's own userinfo travel, so
            # credentials of the first URL never reach another origin.
            request = self._client.build_request("GET", url, timeout=timeout)
            return self._client.send(request, stream=True)
        except BlockedAddress as exc:
            raise _Failure("blocked_address", f"{url}: {exc}") from None
        except DnsError as exc:
            raise _Failure("dns_error", f"{url}: {exc}") from None
        except httpx.TimeoutException as exc:
            raise _Failure("timeout", f"{url}: {type(exc).__name__}") from None
        except httpx.UnsupportedProtocol as exc:
            raise _Failure("blocked_scheme", f"{url}: {exc}") from None
        except httpx.InvalidURL as exc:
            raise _Failure("invalid_url", f"{url}: {exc}") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _Failure("connection_error", f"{url}: {type(exc).__name__}: {exc}") from None

    def _read_body(self, response: httpx.Response, url: httpx.URL, deadline: float) -> bytes:
        cap = self.config.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _Failure("too_large", f"{url}: Content-Length {declared} > max_bytes {cap}")
        chunks, size, sniffed = [], 0, False
        try:
            for chunk in response.iter_bytes(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > cap:
                    raise _Failure("too_large", f"{url}: more than max_bytes {cap}")
                if not sniffed and size >= _SNIFF_BYTES:
                    _check_magic(b"".join(chunks), url)  # an HTML page is refused after its first bytes
                    sniffed = True
                if time.monotonic() > deadline:
                    raise _Failure("timeout", f"{url}: body not complete within max_seconds {self.config.max_seconds}")
        except httpx.TimeoutException as exc:
            raise _Failure("timeout", f"{url}: {type(exc).__name__} while reading the body") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _Failure("connection_error", f"{url}: {type(exc).__name__}: {exc}") from None
        data = b"".join(chunks)
        if not sniffed:
            _check_magic(data, url)
        return data


def _check_magic(head: bytes, url: httpx.URL) -> None:
    if sniff_image(head) is None:
        raise _Failure("not_an_image", f"{url}: body starts {head[:16]!r}, no image format")


# --- samples ----------------------------------------------------------------------------------------------------
def is_remote(uri: str | None) -> bool:
    """Does this image reference name something to fetch (`scheme://…`) rather than a local path?"""
    return bool(uri) and bool(_URL.match(uri))


def remote_images(sample: Sample) -> list[int]:
    """Indices of the images held only as a URL (no bytes, no span)."""
    return [i for i, image in enumerate(sample.images)
            if image.bytes is None and image.span is None and is_remote(image.uri)]


def needs_download(sample: Sample) -> bool:
    return bool(remote_images(sample))


def download_samples(samples: list[Sample], downloader: Downloader) -> list[tuple[Sample, Verdict | None]]:
    """Fetch every remote image of `samples` together (`concurrency` at a time) and judge each sample: a
    sample with nothing to fetch passes untouched (None)."""
    todo = {id(s): remote_images(s) for s in samples}
    fetched = downloader.fetch_many([s.images[i].uri for s in samples for i in todo[id(s)]])
    return [(s, apply_fetched(s, todo[id(s)], fetched, downloader.config) if todo[id(s)] else None) for s in samples]


def apply_fetched(sample: Sample, indices: list[int], fetched: dict[str, Fetched], config: DownloadConfig) -> Verdict:
    """Fill the fetched images' bytes; keep, trim (interleaved documents) or drop the sample for the failures."""
    failures = []
    for i in indices:
        result = fetched[sample.images[i].uri]
        if result.data is None:
            failures.append((i, result))
        else:
            sample.images[i].bytes = result.data
    if not failures:
        return Verdict.ok()
    listed = [{"image": i, "uri": r.url, "reason": r.reason} for i, r in failures]
    first = failures[0][1]
    detail = "; ".join(f"image {i}: {r.reason}: {r.detail}" for i, r in failures)[:2000]
    if _placed_by_segments(sample) and config.partial_documents:
        remaining = len(sample.images) - len(failures)
        if remaining >= max(1, kind_of(sample).min_images):
            _remove_images(sample, {i for i, _ in failures})
            return Verdict.ok(download_images_removed=len(failures), download_failures=listed)
    return Verdict.drop(first.reason, detail, download_failures=listed)


def _placed_by_segments(sample: Sample) -> bool:
    """An interleaved document: its images are placed by segments (not by chat turns), so one can go alone."""
    return bool(sample.segments) and not sample.messages


def _remove_images(sample: Sample, removed: set[int]) -> None:
    """Drop images (and the segments that show them), renumbering the segments of the rest."""
    new_index, kept = {}, []
    for i, image in enumerate(sample.images):
        if i not in removed:
            new_index[i] = len(kept)
            kept.append(image)
    segments = []
    for seg in sample.segments:
        if seg.type == "image":
            if seg.image_index in removed:
                continue
            seg = Segment("image", seg.text, new_index[seg.image_index])
        segments.append(seg)
    sample.images, sample.segments = kept, segments
