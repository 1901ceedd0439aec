"""The download stage in Beam: samples whose images are only URLs → the same samples with the bytes fetched,
or Rejections (reasons: curation/download.py `REASONS`).

    samples | "download" >> DownloadStage(DownloadConfig(), max_error_ratio=0.05)   # {"kept", "rejected"}

Samples with nothing to fetch pass through untouched (counted as kept, no lineage). The rest are batched
(`download.batch_size`) so that one worker fetches many images at once (`download.concurrency` threads over one
connection pool, built in `setup()`), then routed like every stage (pipelines/stages.py: `kept`, one
`dropped_<reason>` counter per reason, lineage); the images trimmed from interleaved documents are counted as `images_removed_<reason>`, every
image fetched as `images_fetched`. An unexpected error quarantines its whole batch (`quarantined_error`).
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam

from vlmloom.curation.download import (STAGE, Downloader, DownloadConfig, Resolver, download_samples,
                                       needs_download, remote_images)
from vlmloom.pipelines import progress
from vlmloom.pipelines.stages import DEAD_LETTER, KEPT, REJECTED, Fixed, quarantine_any, route
from vlmloom.schemas.config import config_hash

# Input formats whose records name their images by URL (the URL-list and document readers, and their aliases).
URL_LIST_FORMATS = frozenset({"urls", "laion", "mmc4", "obelics"})
_FETCH = "fetch"


def download_enabled(config: DownloadConfig, inputs) -> bool:
    """Does the job need the stage? `download.enabled` when set; unset, when an input's format is a URL list.
    (An `auto` input is not known to be one when the graph is built: such jobs set `download.enabled: true`, or
    name the format; otherwise decode rejects URL-only images as `empty_bytes`, the URL in the detail.)"""
    if config.enabled is not None:
        return config.enabled
    return any(cfg.format in URL_LIST_FORMATS for cfg in inputs)


class _FetchBatch(progress.CountingDoFn):
    """[Sample] → (sample, Verdict | None) pairs, every remote image of the batch fetched together."""

    def __init__(self, config: DownloadConfig, resolver: Resolver | None):
        self._config = config
        self._resolver = resolver
        self._downloader: Downloader | None = None
        self._fetched = progress.counter(STAGE, "images_fetched")
        self._removed: dict[str, progress.MirroredCounter] = {}

    def setup(self) -> None:
        super().setup()
        self._downloader = Downloader(self._config, self._resolver)  # a connection pool per worker, not pickled

    def teardown(self) -> None:
        if self._downloader is not None:
            self._downloader.close()

    def process(self, batch):
        batch = list(batch)
        remote = [len(remote_images(sample)) for sample in batch]
        for (sample, verdict), count in zip(download_samples(batch, self._downloader), remote):
            if verdict is not None:
                failures = verdict.signals.get("download_failures") or []
                self._fetched.inc(count - len(failures))
                for failure in failures if verdict.keep else ():  # a trimmed document's images
                    reason = failure["reason"]
                    if reason not in self._removed:
                        self._removed[reason] = progress.counter(STAGE, f"images_removed_{reason}")
                    self._removed[reason].inc()
            yield sample, verdict


class _Split(progress.CountingDoFn):
    """Samples with images to fetch → the `fetch` output; the rest pass on at once, counted as kept (live progress
    reads a stage's `kept` counter as what it passed on)."""

    def __init__(self):
        self._kept = progress.counter(STAGE, "kept")

    def process(self, sample):
        if needs_download(sample):
            yield beam.pvalue.TaggedOutput(_FETCH, sample)
        else:
            self._kept.inc()
            yield sample


def _pair(pair):
    return pair


class DownloadStage(beam.PTransform):
    """Fetch the URL-only images of every sample (see the module docstring); `resolver` replaces DNS (tests)."""

    def __init__(self, config: DownloadConfig, max_error_ratio: float = 0.05, resolver: Resolver | None = None):
        super().__init__(label=STAGE)
        self._config = config
        self._max_error_ratio = max_error_ratio
        self._resolver = resolver

    def expand(self, samples):
        split = samples | "NeedsDownload" >> beam.ParDo(_Split()).with_outputs(_FETCH, main=KEPT)
        todo, passthrough = split[_FETCH], split[KEPT]
        size = self._config.batch_size
        fetched = (
            todo
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "Fetch" >> beam.ParDo(_FetchBatch(self._config, self._resolver))
            .with_exception_handling(threshold=self._max_error_ratio, use_subprocess=False,
                                     main_tag=KEPT, dead_letter_tag=DEAD_LETTER)
        )
        good = fetched[KEPT]
        quarantined = fetched[DEAD_LETTER] | "QuarantineBatch" >> beam.FlatMap(quarantine_any(STAGE))
        kept, rejected = route(good, "Judge", STAGE, Fixed(_pair), config_hash(self._config),
                               max_error_ratio=self._max_error_ratio)
        return {KEPT: (kept, passthrough) | "MergeKept" >> beam.Flatten(),
                REJECTED: (*rejected, quarantined) | "MergeRejected" >> beam.Flatten()}
