"""Recaptioning: a VLM writes a new caption per image; the sample keeps both texts.

Backends sit behind `RECAPTION_BACKENDS` (name → factory(config) → captioner); a captioner maps a
batch of samples to one `CaptionResult` each (text, or the error that remained after retries).
- `openai`: an OpenAI-compatible `/chat/completions` server (vLLM, SGLang serving GLM-4.1V or any
  VLM). The image travels as a data URL. Requests run `concurrency` at a time, under a per-worker
  rate limit, through `ChatCompletionsClient` (curation/chat_client.py): a timeout each; 429, 5xx,
  timeouts and connection errors retried with exponential backoff; other 4xx fail at once.
- `transformers`: a local image-text-to-text model directory, run with its chat template.
A sample whose recaption still fails is rejected with `recaption_failed` and the error in `detail`
(the dead-letter output: it is written to `rejected/`, never silently dropped).

Which text a kept sample trains on is decided per key and reproducibly: with probability
`recaption_ratio`, `signals.text_choice = "recaption"`, else `"original"` (`Sample.training_text()`).
"""
from __future__ import annotations

import base64
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

from vlmloom.curation.base import Verdict
from vlmloom.curation.chat_client import ChatClientError, ChatCompletionsClient, api_key_from_env
from vlmloom.schemas.registry import Registry
from vlmloom.curation.concepts import key_uniform
from vlmloom.schemas.kinds import check_kind_selection, kinds_annotated_by
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import Sample

STAGE = "recaption"
FAILED = "recaption_failed"
DEFAULT_PROMPT = "Describe this image in detail. Mention the objects, any visible text, and the setting."


@dataclass(frozen=True, kw_only=True)
class RecaptionConfig:
    enabled: bool = False  # off by default: needs a server or a local model
    backend: str = "openai"  # "openai" (chat-completions server) | "transformers" (local model dir)
    base_url: str = ""  # openai: server root incl. /v1, e.g. http://localhost:8000/v1; "" = stage off
    model: str = ""  # openai: model name the server serves; "" = ask the server's /models for its first one
    api_key_env: str = ""  # openai: environment variable holding the bearer token; "" = no Authorization header
    model_path: str = ""  # transformers: local image-text-to-text model dir; "" = stage off
    prompt: str = DEFAULT_PROMPT  # the user instruction sent with the image
    max_new_tokens: int = 256  # caption length limit in tokens
    temperature: float = 0.0  # sampling temperature; 0 = greedy
    recaption_ratio: float = 0.5  # share of kept samples that train on the recaption (chosen per key)
    seed: int = 0  # salt of the per-key text choice
    kinds: tuple[str, ...] = ()  # kinds to recaption (others pass through); () = those the kinds table marks "recaption"
    min_chars: int = 8  # a shorter (e.g. empty) reply counts as a failure
    concurrency: int = 8  # openai: requests in flight per worker
    requests_per_second: float = 0.0  # openai: per-worker rate limit; 0 = unlimited
    timeout_seconds: float = 60.0  # openai: per-request timeout
    max_retries: int = 4  # openai: retries after the first attempt on 429/5xx/timeouts/connection errors
    backoff_seconds: float = 1.0  # openai: first backoff, doubled per retry (Retry-After wins when larger)
    device: str = "cpu"  # transformers: torch device
    batch_size: int = 8  # samples per RunInference batch

    def validate(self) -> None:
        check_kind_selection("recaption.kinds", self.kinds)
        if self.backend not in RECAPTION_BACKENDS:
            raise ConfigError(f"recaption.backend {self.backend!r} is unknown: use one of {RECAPTION_BACKENDS.names()}")
        if self.enabled and self.backend == "openai" and not self.base_url:
            raise ConfigError("recaption.base_url is empty: set it to an OpenAI-compatible server "
                              "(e.g. http://localhost:8000/v1) or use recaption.backend=transformers")
        if self.enabled and self.backend == "transformers" and not self.model_path:
            raise ConfigError("recaption.model_path is empty: set it to a local image-text-to-text model dir "
                              "or disable recaption")
        if not 0.0 <= self.recaption_ratio <= 1.0:
            raise ConfigError(f"recaption.recaption_ratio ({self.recaption_ratio}) must be in [0, 1]")
        if self.concurrency < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("recaption.concurrency, batch_size and max_new_tokens must be >= 1")
        if self.max_retries < 0 or self.timeout_seconds <= 0 or self.backoff_seconds < 0 or self.requests_per_second < 0:
            raise ConfigError("recaption.max_retries >= 0, timeout_seconds > 0, backoff_seconds >= 0 and "
                              "requests_per_second >= 0 are required")

    @property
    def configured(self) -> bool:
        return bool(self.base_url) if self.backend == "openai" else bool(self.model_path)


@dataclass
class CaptionResult:
    text: str | None = None
    error: str | None = None
    attempts: int = 1


Captioner = Callable[[Sequence[Sample]], list[CaptionResult]]
RECAPTION_BACKENDS: Registry[Callable[[RecaptionConfig], Captioner]] = Registry("recaption backend")


def image_data_url(sample: Sample) -> str:
    ref = sample.images[0]
    fmt = (ref.format or "jpeg").lower()
    mime = {"jpg": "jpeg"}.get(fmt, fmt)
    return f"data:image/{mime};base64,{base64.b64encode(ref.bytes).decode('ascii')}"


class RateLimiter:
    """At most `rate` acquisitions per second across the threads of one worker (0 = unlimited)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


class OpenAICaptioner:
    """`concurrency` requests in flight under a per-worker rate limit; retries live in `ChatCompletionsClient`."""

    def __init__(self, config: RecaptionConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        limiter = RateLimiter(config.requests_per_second, sleep=sleep)
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="recaption")
        api_key = api_key_from_env(config.api_key_env, "recaption.api_key_env")
        self._client = ChatCompletionsClient(config.base_url, api_key, timeout_seconds=config.timeout_seconds,
                                             max_retries=config.max_retries, backoff_seconds=config.backoff_seconds,
                                             sleep=sleep, before_attempt=limiter.acquire)
        self._model = config.model or self._first_model()

    def _first_model(self) -> str:
        try:
            return self._client.first_model()
        except ChatClientError as exc:
            raise RuntimeError(f"recaption.model is empty and {exc}: set recaption.model to the served model "
                               "name") from exc

    def __call__(self, samples: Sequence[Sample]) -> list[CaptionResult]:
        return list(self._pool.map(self.caption, samples))

    def caption(self, sample: Sample) -> CaptionResult:
        c = self.config
        body = {
            "model": self._model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(sample)}},
                {"type": "text", "text": c.prompt},
            ]}],
            "max_tokens": c.max_new_tokens,
            "temperature": c.temperature,
        }
        try:
            reply = self._client.complete(body)
        except ChatClientError as exc:
            return CaptionResult(error=str(exc), attempts=exc.attempts)
        return CaptionResult(text=reply.text, attempts=reply.attempts)


@RECAPTION_BACKENDS.register("openai")
def _openai_captioner(config: RecaptionConfig) -> Captioner:
    return OpenAICaptioner(config)


class TransformersCaptioner:
    """A local image-text-to-text model; one generate() call per batch, prompts via the chat template."""

    def __init__(self, config: RecaptionConfig):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config = config
        self._torch = torch
        local = os.path.isdir(config.model_path)
        try:
            self.processor = AutoProcessor.from_pretrained(config.model_path, local_files_only=local)
            self.model = AutoModelForImageTextToText.from_pretrained(config.model_path, local_files_only=local)
        except OSError as exc:
            raise RuntimeError(f"could not load recaption.model_path {config.model_path!r}: not a local directory and "
                               f"the hub is unreachable (offline?); download it and point model_path at it ({exc})") from exc
        self.model = self.model.eval().to(config.device)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge

    def __call__(self, samples: Sequence[Sample]) -> list[CaptionResult]:
        from PIL import Image

        conversations = []
        for sample in samples:
            image = Image.open(io.BytesIO(sample.images[0].bytes)).convert("RGB")
            conversations.append([{"role": "user", "content": [
                {"type": "image", "image": image}, {"type": "text", "text": self.config.prompt}]}])
        inputs = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt",
                                                    processor_kwargs={"padding": True})
        inputs = inputs.to(self.config.device)
        sampling = {"do_sample": True, "temperature": self.config.temperature} if self.config.temperature > 0 else \
            {"do_sample": False}
        with self._torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, **sampling)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [CaptionResult(text=t.strip()) for t in texts]


@RECAPTION_BACKENDS.register("transformers")
def _transformers_captioner(config: RecaptionConfig) -> Captioner:
    return TransformersCaptioner(config)


class Recaptioner:
    def __init__(self, config: RecaptionConfig, captioner: Captioner | None = None):
        self.config = config
        self._captioner = captioner

    def applies(self, sample: Sample) -> bool:
        return sample.kind in (self.config.kinds or kinds_annotated_by(STAGE))

    def caption_batch(self, samples: Sequence[Sample]) -> list[CaptionResult]:
        if self._captioner is None:
            self._captioner = RECAPTION_BACKENDS.get(self.config.backend)(self.config)
        with_image = [i for i, s in enumerate(samples) if s.images and s.images[0].bytes]
        results = [CaptionResult(error="sample has no image bytes") for _ in samples]
        if with_image:
            for i, result in zip(with_image, self._captioner([samples[i] for i in with_image])):
                results[i] = result
        return results

    def judge(self, sample: Sample, result: CaptionResult) -> Verdict:
        text = (result.text or "").strip()
        if result.error or len(text) < self.config.min_chars:
            error = result.error or f"reply shorter than recaption.min_chars={self.config.min_chars}: {text!r}"
            return Verdict.drop(FAILED, f"{self.config.backend}: {error}"[:2000], recaption_attempts=result.attempts)
        sample.recaption = text
        choice = "recaption" if key_uniform(f"recaption/{self.config.seed}", sample.key) < self.config.recaption_ratio else "original"
        if not sample.text:
            choice = "recaption"
        return Verdict.ok(text_choice=choice, recaption_attempts=result.attempts)
