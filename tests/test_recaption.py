"""Recaptioning: the OpenAI-compatible backend against a loopback server that speaks the same API (429, 5xx,
timeouts, 4xx, empty replies), the local transformers backend with a tiny saved model, and the Beam stage."""
from __future__ import annotations

import base64
import collections
import io
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from loopback_http import LoopbackJsonServer
from PIL import Image

from vlmloom.curation.concepts import key_uniform
from vlmloom.curation.recaption import (CaptionResult, OpenAICaptioner, RateLimiter, RecaptionConfig, Recaptioner,
                                        image_data_url)
from vlmloom.demo.models import save_random_vlm
from vlmloom.pipelines.model_stages import recaption_stage
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import ImageRef, Sample

SCENARIOS = {  # colour of the sample's image → what the server does on attempt 1, 2, 3, ...
    "red": ["ok"],
    "green": ["429", "500", "ok"],
    "blue": ["slow", "ok"],
    "black": ["503"] * 10,
    "white": ["400"],
    "gray": ["empty"],
}


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def make(colour: str, text: str | None = "original caption", kind: str = "caption") -> Sample:
    return Sample(key=f"k-{colour}", source="t", source_id=colour, kind=kind, text=text,
                  images=[ImageRef(width=24, height=16, format="png", bytes=png(colour))])


class FakeServer(LoopbackJsonServer):
    """A chat-completions server on 127.0.0.1 whose reply depends on the image and the attempt number."""

    def __init__(self):
        self.by_image = {base64.b64encode(png(c)).decode(): c for c in SCENARIOS}
        self.attempts: collections.Counter = collections.Counter()
        self.requests: list[dict] = []
        super().__init__(self.on_post, lambda path: {"object": "list", "data": [{"id": "served-vlm"}]})

    def on_post(self, request: dict, headers: dict):
        self.requests.append(request)
        url = request["messages"][0]["content"][0]["image_url"]["url"]
        colour = self.by_image[url.split(",", 1)[1]]
        self.attempts[colour] += 1
        plan = SCENARIOS[colour]
        action = plan[min(self.attempts[colour], len(plan)) - 1]
        if action == "slow":
            time.sleep(1.0)
            action = "ok"
        if action in ("ok", "empty"):
            content = "" if action == "empty" else f"A plain {colour} rectangle."
            return 200, {"id": "x", "object": "chat.completion", "model": request["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]}, {}
        if action == "429":
            return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"}
        return int(action), {"error": {"message": f"error {action}"}}, {}


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def config(server: FakeServer, **kw) -> RecaptionConfig:
    base = dict(enabled=True, base_url=server.url, model="served-vlm", timeout_seconds=0.4, max_retries=2,
                backoff_seconds=0.01, concurrency=4)
    base.update(kw)
    return RecaptionConfig(**base)


def test_openai_backend_retries_and_gives_up(server):
    captioner = OpenAICaptioner(config(server))
    results = {c: captioner.caption(make(c)) for c in SCENARIOS}
    assert results["red"].text == "A plain red rectangle." and results["red"].attempts == 1
    assert results["green"].text == "A plain green rectangle." and results["green"].attempts == 3
    assert results["blue"].text == "A plain blue rectangle." and results["blue"].attempts == 2
    assert results["black"].text is None and "gave up after 3 attempts: HTTP 503" in results["black"].error
    assert results["white"].error.startswith("HTTP 400") and server.attempts["white"] == 1  # 4xx: no retry
    assert results["gray"].text == ""
    request = server.requests[0]
    assert request["model"] == "served-vlm" and request["max_tokens"] == 256 and request["temperature"] == 0.0
    assert request["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_openai_backend_asks_server_for_model_name(server):
    captioner = OpenAICaptioner(config(server, model=""))
    assert captioner.caption(make("red")).text == "A plain red rectangle."
    assert server.requests[-1]["model"] == "served-vlm"


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(RuntimeError, match="recaption.model"):
        OpenAICaptioner(RecaptionConfig(enabled=True, base_url="http://127.0.0.1:9/v1", timeout_seconds=0.5))


def test_rate_limiter_spaces_requests():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.acquire()
    assert slept == [0.25, 0.25]
    RateLimiter(0.0).acquire()  # unlimited: returns at once


def test_data_url():
    assert image_data_url(make("red")).startswith("data:image/png;base64,iVBOR")


def test_config_errors():
    with pytest.raises(ConfigError, match="recaption.base_url is empty"):
        build_config(RecaptionConfig, {"enabled": True})
    with pytest.raises(ConfigError, match="recaption.model_path is empty"):
        build_config(RecaptionConfig, {"enabled": True, "backend": "transformers"})
    with pytest.raises(ConfigError, match="recaption_ratio"):
        build_config(RecaptionConfig, {"recaption_ratio": 1.5})


def test_recaption_stage_covers_every_reason(server):
    samples = [make(c) for c in SCENARIOS] + [make("yellow", kind="ocr"),  # other kind: untouched
                                              make("navy", text=None)]
    samples[-1].images = []  # no image bytes → recaption_failed
    cfg = config(server, recaption_ratio=0.5, seed=7, batch_size=8)

    def choice(key):
        return "recaption" if key_uniform("recaption/7", key) < 0.5 else "original"

    with BeamPipeline() as p:
        out = p | beam.Create(samples) | recaption_stage(cfg)
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: (s.key, s.recaption, s.signals.get("text_choice"),
                                                               s.training_text())),
                    equal_to([("k-red", "A plain red rectangle.", choice("k-red"),
                               "A plain red rectangle." if choice("k-red") == "recaption" else "original caption"),
                              ("k-green", "A plain green rectangle.", choice("k-green"),
                               "A plain green rectangle." if choice("k-green") == "recaption" else "original caption"),
                              ("k-blue", "A plain blue rectangle.", choice("k-blue"),
                               "A plain blue rectangle." if choice("k-blue") == "recaption" else "original caption"),
                              ("k-yellow", None, None, "original caption")]), label="kept")
        assert_that(out["rejected"] | "Rejected" >> beam.Map(lambda r: (r.key, r.stage, r.reason,
                                                                       r.detail.split(":")[1].strip()[:7])),
                    equal_to([("k-black", "recaption", "recaption_failed", "gave up"),
                              ("k-white", "recaption", "recaption_failed", "HTTP 40"),
                              ("k-gray", "recaption", "recaption_failed", "reply s"),
                              ("k-navy", "recaption", "recaption_failed", "sample ")]), label="rejected")


def test_text_choice_ratio_is_per_key_and_reproducible():
    worker = Recaptioner(RecaptionConfig(recaption_ratio=0.3), captioner=lambda batch: [])

    choices = []
    for i in range(400):
        sample = Sample(key=f"k{i}", source="t", source_id=str(i), text="x")
        choices.append(worker.judge(sample, CaptionResult(text="a long enough caption")).signals["text_choice"])
    assert 0.24 < choices.count("recaption") / 400 < 0.36
    again = Sample(key="k0", source="t", source_id="0", text="x")
    assert worker.judge(again, CaptionResult(text="a long enough caption")).signals["text_choice"] == choices[0]


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return save_random_vlm(str(tmp_path_factory.mktemp("vlm")))


def test_transformers_backend_in_stage(vlm_dir):
    cfg = RecaptionConfig(enabled=True, backend="transformers", model_path=vlm_dir, max_new_tokens=6, min_chars=1,
                          recaption_ratio=1.0, batch_size=2)
    samples = [make(c) for c in ("red", "green", "blue")]
    with BeamPipeline() as p:
        out = p | beam.Create(samples) | recaption_stage(cfg)
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: (s.key, bool(s.recaption), s.signals["text_choice"],
                                                               s.training_text() == s.recaption)),
                    equal_to([(s.key, True, "recaption", True) for s in samples]), label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")
