"""The download stage (curation/download.py, pipelines/download.py) against a loopback server on 127.0.0.1 only.

Names other than literal addresses resolve through `StubResolver` (no DNS query leaves the machine); the server
counts the requests it receives, so the tests prove what was never fetched.
"""
import io
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from loopback_http import LoopbackHttpServer, Route
from vlmloom.curation.decode import DecodeConfig, decode_sample
from vlmloom.curation.download import (DnsError, Downloader, DownloadConfig, address_category, download_samples,
                                       literal_address, sniff_image)
from vlmloom.pipelines.curate import curate_stages, load_config
from vlmloom.pipelines.download import DownloadStage, download_enabled
from vlmloom.pipelines.stages import JudgeStage
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import ImageRef, Sample, Segment, make_key


def _png(width=3, height=2) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class StubResolver(dict):
    """name → addresses, in place of DNS; counts its calls. Module level: pickles into Beam DoFns by reference."""

    calls: list

    def __call__(self, host, port):
        type(self).calls.append(host)
        if host not in self:
            raise DnsError(f"{host}: not in the stub")
        return list(self[host])


StubResolver.calls = []


def config(**overrides) -> DownloadConfig:
    """Short timeouts; the loopback server allowed by network (the default refuses it: see the opt-in test)."""
    values = dict(timeout_s=0.5, max_seconds=3.0, retries=2, backoff_s=0.01, allowed_networks=["127.0.0.1/32"])
    values.update(overrides)
    return DownloadConfig(**values)


def fetch(url, resolver=None, **overrides):
    downloader = Downloader(config(**overrides), resolver)
    try:
        return downloader.fetch(url)
    finally:
        downloader.close()


@pytest.fixture
def server():
    with LoopbackHttpServer({"/img.png": Route(200, PNG, {"Content-Type": "image/png"})}) as srv:
        yield srv


# --- the happy path, and what each request carries -----------------------------------------------------------------
def test_fetches_an_image_with_our_user_agent_and_the_name_as_host(server):
    resolver = StubResolver({"img.test": ["127.0.0.1"]})
    result = fetch(f"http://img.test:{server.port}/img.png", resolver, user_agent="tester/2")
    assert (result.data, result.reason, result.attempts) == (PNG, None, 1)
    (path, headers), = server.requests
    assert (path, headers["host"], headers["user-agent"]) == ("/img.png", f"img.test:{server.port}", "tester/2")
    assert "cookie" not in headers and "authorization" not in headers


def test_default_refuses_the_loopback_server_and_the_opt_ins_allow_it(server):
    url = f"{server.url}/img.png"
    refused = Downloader(DownloadConfig(timeout_s=0.5)).fetch(url)
    assert (refused.reason, refused.data) == ("blocked_address", None)
    assert server.count() == 0
    assert fetch(url, allowed_networks=[], allow_private_addresses=True).data == PNG
    assert fetch(url, allowed_networks=["127.0.0.0/8"]).data == PNG
    assert server.count() == 2


# --- every literal form and resolved name that points inward -------------------------------------------------------
BLOCKED = {  # URL (port filled in) → reason, under config(): only 127.0.0.1/32 is opted in
    "http://2130706433:{port}/img.png": None,  # decimal 127.0.0.1: allowed by the opt-in, fetched
    "http://2130706434:{port}/img.png": "blocked_address",  # decimal 127.0.0.2
    "http://0177.0.0.2:{port}/img.png": "blocked_address",  # octal (httpx refuses it; getaddrinfo would dial it)
    "http://0x7f.2:{port}/img.png": "blocked_address",  # hex, short form
    "http://127.2:{port}/img.png": "blocked_address",  # short form: 127.0.0.2
    "http://0:{port}/img.png": "blocked_address",  # 0.0.0.0 reaches the local host
    "http://[::1]:{port}/img.png": "blocked_address",
    "http://[::]:{port}/img.png": "blocked_address",
    "http://[::ffff:127.0.0.2]:{port}/img.png": "blocked_address",  # IPv4-mapped
    "http://[::ffff:7f00:2]:{port}/img.png": "blocked_address",  # the same, in hex
    "http://[::127.0.0.1]:{port}/img.png": "blocked_address",  # IPv4-compatible (deprecated)
    "http://[64:ff9b::a00:1]:{port}/img.png": "blocked_address",  # NAT64 of 10.0.0.1
    "http://[2002:c0a8:101::]:{port}/img.png": "blocked_address",  # 6to4 of 192.168.1.1
    "http://[fe80::1%25eth0]:{port}/img.png": "blocked_address",  # link-local with a zone
    "http://[fd00::1]:{port}/img.png": "blocked_address",  # unique local
    "http://169.254.169.254:{port}/latest/meta-data/": "blocked_address",  # the metadata service
    "http://10.1.2.3:{port}/img.png": "blocked_address",
    "http://172.16.0.1:{port}/img.png": "blocked_address",
    "http://192.168.0.1:{port}/img.png": "blocked_address",
    "http://100.64.0.1:{port}/img.png": "blocked_address",  # CGNAT
    "http://224.0.0.1:{port}/img.png": "blocked_address",  # multicast
    "http://255.255.255.255:{port}/img.png": "blocked_address",
    "http://internal.test:{port}/img.png": "blocked_address",  # a name → 10.0.0.5
    "http://metadata.test:{port}/img.png": "blocked_address",  # a name → 169.254.169.254
    "http://rebind.test:{port}/img.png": "blocked_address",  # a name → a public address *and* 127.0.0.2
    "http://mapped.test:{port}/img.png": "blocked_address",  # a name → ::ffff:192.168.0.1
    "http://nowhere.test:{port}/img.png": "dns_error",
    "file:///etc/passwd": "blocked_scheme",
    "ftp://127.0.0.1:{port}/img.png": "blocked_scheme",
    "gopher://127.0.0.1:{port}/": "blocked_scheme",
    "127.0.0.1:{port}/img.png": "blocked_scheme",  # no scheme at all
}
NAMES = StubResolver({"internal.test": ["10.0.0.5"], "metadata.test": ["169.254.169.254"],
                      "rebind.test": ["93.184.216.34", "127.0.0.2"], "mapped.test": ["::ffff:192.168.0.1"]})


def test_every_inward_address_form_is_refused_before_any_request(server):
    downloader = Downloader(config(), NAMES)
    try:
        got = {url: downloader.fetch(url.format(port=server.port)).reason for url in BLOCKED}
    finally:
        downloader.close()
    assert got == BLOCKED
    assert server.count() == 1  # the one allowed form; nothing else reached the server


def test_link_local_stays_refused_with_allow_private_addresses(server):
    downloader = Downloader(DownloadConfig(timeout_s=0.5, allow_private_addresses=True), NAMES)
    try:
        reasons = [downloader.fetch(u.format(port=server.port)).reason for u in (
            "http://169.254.169.254:{port}/", "http://metadata.test:{port}/", "http://[fe80::1]:{port}/",
            "http://0:{port}/", "http://224.0.0.1:{port}/")]
    finally:
        downloader.close()
    assert reasons == ["blocked_address"] * 5
    assert server.count() == 0


@pytest.mark.parametrize("text,category", [
    ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None), ("64:ff9b::808:808", None),
    ("127.0.0.1", "loopback"), ("10.255.0.1", "private"), ("100.127.255.255", "cgnat"), ("100.128.0.0", None),
    ("169.254.169.254", "link_local"), ("0.0.0.0", "unspecified"), ("239.1.1.1", "multicast"),
    ("240.0.0.1", "reserved"), ("198.18.0.1", "reserved"), ("192.0.2.1", "documentation"),
    ("::1", "loopback"), ("::", "unspecified"), ("::ffff:10.0.0.1", "private"), ("fc00::1", "private"),
    ("fe80::1", "link_local"), ("ff02::1", "multicast"), ("2001:db8::1", "documentation"),
    ("2001::1", "reserved"), ("::7f00:1", "reserved"), ("2002:7f00:1::", "loopback"), ("4000::1", "reserved"),
])
def test_address_category(text, category):
    assert address_category(ipaddress.ip_address(text)) == category


@pytest.mark.parametrize("host,address", [
    ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"), ("[::1]", "::1"), ("fe80::1%eth0", "fe80::1"), ("img.test", None),
    ("cafe.be", None),
])
def test_literal_addresses_are_read_as_the_c_resolver_reads_them(host, address):
    found = literal_address(host)
    assert (str(found) if found else None) == address


def test_the_connection_uses_the_checked_address_without_a_second_lookup(server, monkeypatch):
    asked = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: asked.append(host) or real(host, *a, **k))
    StubResolver.calls = []
    result = fetch(f"http://img.test:{server.port}/img.png", StubResolver({"img.test": ["127.0.0.1"]}))
    assert result.data == PNG
    assert StubResolver.calls == ["img.test"]  # resolved once, by the policy
    assert "img.test" not in asked and set(asked) <= {"127.0.0.1"}  # the socket dialled the checked address


# --- redirects -----------------------------------------------------------------------------------------------------
def _redirect(location: str) -> Route:
    return Route(302, b"", {"Location": location})


def test_redirects_chain_loop_limit_and_blocked_hops(server):
    p = server.port
    server.routes.update({
        "/r1": _redirect("/r2"), "/r2": _redirect(f"http://127.0.0.1:{p}/img.png"),
        "/loop-a": _redirect("/loop-b"), "/loop-b": _redirect("/loop-a"),
        "/to-private": _redirect(f"http://10.0.0.1:{p}/img.png"),
        "/to-ipv6-loopback": _redirect(f"http://[::1]:{p}/img.png"),
        "/to-metadata-name": _redirect(f"http://metadata.test:{p}/latest"),
        "/to-file": _redirect("file:///etc/passwd"),
    })
    downloader = Downloader(config(), NAMES)
    try:
        got = {path: downloader.fetch(f"{server.url}{path}").reason
               for path in ("/r1", "/loop-a", "/to-private", "/to-ipv6-loopback", "/to-metadata-name", "/to-file")}
        assert downloader.fetch(f"{server.url}/r1").data == PNG
    finally:
        downloader.close()
    assert got == {"/r1": None, "/loop-a": "too_many_redirects", "/to-private": "blocked_address",
                   "/to-ipv6-loopback": "blocked_address", "/to-metadata-name": "blocked_address",
                   "/to-file": "blocked_scheme"}
    assert server.count("/loop-a") == 3 and server.count("/loop-b") == 3  # 1 + max_redirects (5) requests
    assert server.count("/img.png") == 2  # only through /r1; no blocked hop was ever requested
    assert fetch(f"{server.url}/r1", max_redirects=1).reason == "too_many_redirects"


def test_credentials_never_follow_a_redirect_to_another_host(server):
    p = server.port
    names = StubResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    server.routes.update({
        "/login": Route(302, b"", {"Location": f"http://b.test:{p}/img.png", "Set-Cookie": "session=secret; Path=/"}),
        "/same": Route(302, b"", {"Location": "/img.png", "Set-Cookie": "session=secret; Path=/"}),
    })
    downloader = Downloader(config(), names)
    try:
        assert downloader.fetch(f"http://user:pw@a.test:{p}/login").data == PNG
        assert downloader.fetch(f"http://user:pw@a.test:{p}/same").data == PNG
        assert downloader.fetch(f"http://a.test:{p}/img.png").data == PNG
    finally:
        downloader.close()
    (h_login, h_other, h_same, h_same_img, h_again) = [h for _, h in server.requests]
    assert "authorization" in h_login and h_other["host"] == f"b.test:{p}"
    assert "authorization" not in h_other and "cookie" not in h_other  # another host: nothing travels
    assert h_same_img["authorization"] == h_same["authorization"]  # same origin: the URL's own credentials
    assert "cookie" not in h_same_img and "cookie" not in h_again  # no cookie is ever stored


def test_proxy_settings_from_the_environment_are_ignored(server, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert fetch(f"{server.url}/img.png").data == PNG


# --- what the server does ------------------------------------------------------------------------------------------
def test_http_errors_timeouts_and_retries(server):
    def flaky(attempt):
        return Route(503, b"busy") if attempt < 3 else Route(200, PNG)

    server.routes.update({"/flaky": flaky, "/slow": Route(200, PNG, delay=1.0),
                          "/trickle": Route(200, chunks=[PNG[:8]] + [b"\0" * 8] * 20, delay=0.1)})
    ok = fetch(f"{server.url}/flaky")
    assert (ok.data, ok.attempts, server.count("/flaky")) == (PNG, 3, 3)
    gave_up = fetch(f"{server.url}/flaky-too", retries=1)
    assert (gave_up.reason, server.count("/flaky-too")) == ("http_404", 1)  # a 404 is not retried
    server.routes["/busy"] = Route(503, b"busy")
    busy = fetch(f"{server.url}/busy", retries=1)
    assert (busy.reason, busy.attempts, server.count("/busy")) == ("http_503", 2, 2)
    assert fetch(f"{server.url}/slow", timeout_s=0.2, retries=0).reason == "timeout"
    trickled = fetch(f"{server.url}/trickle", timeout_s=0.5, max_seconds=0.5, retries=0)
    assert trickled.reason == "timeout"  # every read came in time; the image as a whole did not


def test_connection_refused_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    result = fetch(f"http://127.0.0.1:{port}/img.png", retries=1)
    assert (result.reason, result.attempts) == ("connection_error", 2)


def test_byte_cap_declared_and_streamed(server):
    big = PNG + b"\0" * 5000
    server.routes.update({"/declared": Route(200, big),
                          "/streamed": Route(200, chunks=[big[i:i + 500] for i in range(0, len(big), 500)],
                                             content_length=False)})
    assert fetch(f"{server.url}/declared", max_bytes=1000).reason == "too_large"
    assert fetch(f"{server.url}/streamed", max_bytes=1000).reason == "too_large"
    assert fetch(f"{server.url}/streamed", max_bytes=len(big)).data == big


def test_opt_outs_and_content_sniffing(server):
    html = b"<!doctype html><html><body>an error page, not an image</body></html>"
    server.routes.update({
        "/noai": Route(200, PNG, {"X-Robots-Tag": "noai"}),
        "/several": Route(200, PNG, {"X-Robots-Tag": "nofollow, NoImageIndex"}),
        "/ours": Route(200, PNG, {"X-Robots-Tag": "vlmloom: noimageai"}),
        "/theirs": Route(200, PNG, {"X-Robots-Tag": "otherbot: noai"}),
        "/none": Route(200, PNG, {"X-Robots-Tag": "none"}),
        "/valued": Route(200, PNG, {"X-Robots-Tag": "noai, unavailable_after: 25 Jun 2010 15:00:00 PST"}),
        "/preview": Route(200, PNG, {"X-Robots-Tag": "max-image-preview:large"}),
        "/html-as-jpeg": Route(200, html, {"Content-Type": "image/jpeg"}),
        "/png-as-html": Route(200, PNG, {"Content-Type": "text/html"}),
        "/empty": Route(200, b""),
    })
    got = {path: fetch(f"{server.url}{path}").reason for path in (
        "/noai", "/several", "/ours", "/theirs", "/none", "/valued", "/preview", "/html-as-jpeg", "/png-as-html",
        "/empty")}
    assert got == {"/noai": "opted_out", "/several": "opted_out", "/ours": "opted_out", "/theirs": None,
                   "/none": "opted_out", "/valued": "opted_out", "/preview": None, "/html-as-jpeg": "not_an_image",
                   "/png-as-html": None, "/empty": "not_an_image"}
    assert fetch(f"{server.url}/noai", opt_out_directives=[]).data == PNG


def test_sniff_image_formats():
    assert [sniff_image(b) for b in (PNG, b"\xff\xd8\xff\xe0" + b"\0" * 8, b"GIF89a....", b"RIFF\0\0\0\0WEBPVP8 ",
                                     b"\0\0\0\x1cftypavif", b"<html>", b"")] == \
        ["png", "jpeg", "gif", "webp", "avif", None, None]


# --- samples: captions, chats and interleaved documents -------------------------------------------------------------
def _sample(source_id, urls, kind="caption", segments=None):
    return Sample(key=make_key("urls", source_id), source="urls", source_id=source_id, kind=kind,
                  images=[ImageRef(uri=u) for u in urls], segments=segments or [], text="a caption")


def _document(server, paths):
    images = [f"{server.url}{p}" for p in paths]
    segments = [Segment("text", "intro")]
    for i in range(len(images)):
        segments += [Segment("image", image_index=i), Segment("text", f"after {i}")]
    return _sample("doc", images, "interleaved", segments)


def test_interleaved_documents_keep_their_other_images(server):
    server.routes["/b.png"] = Route(200, _png(5, 5))
    downloader = Downloader(config())
    try:
        doc = _document(server, ["/img.png", "/missing.png", "/b.png"])
        (sample, verdict), = download_samples([doc], downloader)
        assert verdict.keep and verdict.signals["download_images_removed"] == 1
        assert verdict.signals["download_failures"] == [
            {"image": 1, "uri": f"{server.url}/missing.png", "reason": "http_404"}]
        assert [i.uri for i in sample.images] == [f"{server.url}/img.png", f"{server.url}/b.png"]
        assert [i.bytes for i in sample.images] == [PNG, _png(5, 5)]
        assert [(s.type, s.text, s.image_index) for s in sample.segments] == [
            ("text", "intro", None), ("image", None, 0), ("text", "after 0", None), ("text", "after 1", None),
            ("image", None, 1), ("text", "after 2", None)]
        all_failed = _document(server, ["/missing.png", "/gone.png"])
        (_, verdict), = download_samples([all_failed], downloader)
        assert (verdict.keep, verdict.reason) == (False, "http_404")
    finally:
        downloader.close()
    strict = Downloader(config(partial_documents=False))
    try:
        (_, verdict), = download_samples([_document(server, ["/img.png", "/missing.png"])], strict)
        assert (verdict.keep, verdict.reason) == (False, "http_404")
    finally:
        strict.close()


def test_other_records_are_rejected_when_one_image_fails_and_local_ones_pass_untouched(server):
    local = Sample(key="local", source="s", source_id="l", images=[ImageRef(bytes=PNG, uri="a/b.png")])
    two = _sample("two", [f"{server.url}/img.png", "http://nowhere.test/x.png"])
    same_url = _sample("same", [f"{server.url}/img.png"])
    downloader = Downloader(config(), NAMES)
    try:
        results = download_samples([local, two, same_url], downloader)
    finally:
        downloader.close()
    assert results[0] == (local, None)
    assert (results[1][1].keep, results[1][1].reason) == (False, "dns_error")
    assert "image 1: dns_error" in results[1][1].detail
    assert results[2][1].keep and same_url.images[0].bytes == PNG
    assert server.count("/img.png") == 1  # one URL of a batch is fetched once


# --- the Beam stage, and the read → download → decode path ---------------------------------------------------
def _laion_parquet(path, rows):
    """A LAION/img2dataset URL list in its published columns."""
    pq.write_table(pa.table({"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows],
                             "WIDTH": [3] * len(rows), "HEIGHT": [2] * len(rows),
                             "similarity": [0.31] * len(rows)}), path)


def _read_laion(path):
    """A minimal URL-list reader (the real ones live in curation/readers.py): one caption sample per row."""
    table = pq.read_table(path).to_pylist()
    return [Sample(key=make_key("laion", str(i)), source="laion", source_id=str(i), text=row["TEXT"],
                   images=[ImageRef(uri=row["URL"])]) for i, row in enumerate(table)]


class _Decode:
    def __call__(self):
        return lambda sample: decode_sample(sample, DecodeConfig())


def test_stage_in_a_pipeline_read_download_decode(server, tmp_path):
    p = server.port
    server.routes.update({"/noai.png": Route(200, PNG, {"X-Robots-Tag": "noai"}),
                          "/page.html": Route(200, b"<html>hello, this is not an image at all</html>")})
    _laion_parquet(tmp_path / "laion.parquet", [
        (f"http://127.0.0.1:{p}/img.png", "a red image"), (f"http://127.0.0.1:{p}/missing.png", "gone"),
        (f"http://127.0.0.1:{p}/noai.png", "opted out"), (f"http://127.0.0.1:{p}/page.html", "html"),
        (f"http://10.0.0.1:{p}/img.png", "private"), ("file:///etc/passwd", "scheme")])
    samples = _read_laion(tmp_path / "laion.parquet")
    samples.append(Sample(key="local", source="local", source_id="l", images=[ImageRef(bytes=PNG, uri="x.png")]))
    pipeline = TestPipeline()  # run below, not in a with-block: its counters are read
    out = (pipeline | beam.Create(samples)
           | "download" >> DownloadStage(config(batch_size=4), resolver=NAMES))
    decoded = out["kept"] | "decode" >> JudgeStage("decode", _Decode())
    assert_that(decoded["kept"] | beam.Map(lambda s: (s.source_id, s.images[0].width, s.images[0].uri,
                                                      [e.stage for e in s.lineage])),
                equal_to([("0", 3, f"http://127.0.0.1:{p}/img.png", ["download", "decode"]),
                          ("l", 3, "x.png", ["decode"])]), label="kept")
    assert_that(out["rejected"] | beam.Map(lambda r: (r.source_id, r.stage, r.reason)),
                equal_to([("1", "download", "http_404"), ("2", "download", "opted_out"),
                          ("3", "download", "not_an_image"), ("4", "download", "blocked_address"),
                          ("5", "download", "blocked_scheme")]), label="rejected")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {}
    for c in result.metrics().query(MetricsFilter().with_namespace("download"))["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed  # summed over steps
    assert counters == {"kept": 2, "images_fetched": 1, "dropped_http_404": 1, "dropped_opted_out": 1,
                        "dropped_not_an_image": 1, "dropped_blocked_address": 1, "dropped_blocked_scheme": 1}
    assert server.count() == 4  # 10.0.0.1 and file:// were never requested


def test_stage_on_empty_input_and_an_unexpected_error_quarantines_its_batch():
    """An error inside the client (a bug, not a network failure) must not lose the batch: it is quarantined."""
    failing = [_sample(str(i), [f"http://img{i}.test/x.png"]) for i in range(3)]
    with TestPipeline() as pipeline:
        empty = (pipeline | "Empty" >> beam.Create([], reshuffle=False).with_output_types(Sample)
                 | "OnEmpty" >> DownloadStage(config()))
        assert_that(empty["kept"], equal_to([]), label="empty_kept")
        assert_that(empty["rejected"], equal_to([]), label="empty_rejected")
        out = (pipeline | "Failing" >> beam.Create(failing)
               | "OnFailing" >> DownloadStage(config(batch_size=3), max_error_ratio=1.0, resolver=ExplodingResolver()))
        assert_that(out["kept"], equal_to([]), label="kept")
        assert_that(out["rejected"] | beam.Map(lambda r: (r.source_id, r.stage, r.reason)),
                    equal_to([(str(i), "download", "quarantined_error") for i in range(3)]), label="rejected")


class ExplodingResolver:
    def __call__(self, host, port):
        raise RuntimeError("resolver bug")


# --- configuration -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Input:
    format: str  # an input of a URL-list format (its reader lands with the readers' work)


def test_config_section_and_when_the_stage_runs():
    job = load_config({"inputs": [{"path": "raw/*.tar"}, {"path": "images/", "format": "folder"}],
                       "download": {"concurrency": 4, "allowed_networks": ["10.20.0.0/16"]}})
    assert (job.download.concurrency, job.download.allowed_networks) == (4, ["10.20.0.0/16"])
    assert [name for name, _ in curate_stages(job)][:1] == ["decode"]  # tars and folders name no URLs
    forced = load_config({"inputs": [{"path": "raw/*.tar"}], "download": {"enabled": True}})
    assert [name for name, _ in curate_stages(forced)][:2] == ["download", "decode"]
    manifest = load_config({"inputs": [{"path": "raw/*.tar"}, {"path": "manifest.parquet"}]})
    assert [name for name, _ in curate_stages(manifest)][:1] == ["decode"]  # auto: not known to be a URL list
    assert download_enabled(DownloadConfig(), [_Input("webdataset"), _Input("laion")]) is True
    assert download_enabled(DownloadConfig(), [_Input("mmc4")]) is True
    assert download_enabled(DownloadConfig(enabled=False), [_Input("urls")]) is False
    with pytest.raises(ConfigError, match="allowed_networks: 'intranet' is not a network"):
        build_config(DownloadConfig, {"allowed_networks": ["intranet"]}, "download")
    with pytest.raises(ConfigError, match="concurrency"):
        build_config(DownloadConfig, {"concurrency": 0}, "download")



def _client_hello_server_name(data: bytes) -> str | None:
    """The SNI host name of a TLS ClientHello (record 5 bytes, handshake 4, version 2, random 32, then
    session id, cipher suites, compression methods and the extensions, each length-prefixed)."""
    pos = 5 + 4 + 2 + 32
    pos += 1 + data[pos]
    pos += 2 + int.from_bytes(data[pos:pos + 2], "big")
    pos += 1 + data[pos]
    end = pos + 2 + int.from_bytes(data[pos:pos + 2], "big")
    pos += 2
    while pos < end:
        kind, size = int.from_bytes(data[pos:pos + 2], "big"), int.from_bytes(data[pos + 2:pos + 4], "big")
        if kind == 0:  # server_name: list length 2, name type 1, name length 2, name
            return data[pos + 9:pos + 9 + int.from_bytes(data[pos + 7:pos + 9], "big")].decode()
        pos += 4 + size
    return None


def test_tls_goes_to_the_checked_address_with_the_name_for_sni():
    hellos = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(3)
        port = listener.getsockname()[1]

        def accept_one():
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(3)
                hellos.append(conn.recv(65536))  # then hang up: no certificate, the handshake fails

        thread = threading.Thread(target=accept_one)
        thread.start()
        result = fetch(f"https://img.test:{port}/img.png", StubResolver({"img.test": ["127.0.0.1"]}), retries=0)
        thread.join()
    assert result.reason == "connection_error"
    context = Downloader(config())._client._transport._pool._ssl_context  # the rebuilt pool kept verification
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert hellos[0][0] == 0x16 and _client_hello_server_name(hellos[0]) == "img.test"

