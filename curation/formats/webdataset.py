"""`webdataset`: tar / tar.gz / tgz shards, one record per key (consecutive members sharing it), with any members:
images (`jpg`, `0.png`, ...), text (`txt`, `caption`, `text`), metadata (`json`), `.gz` members read decompressed
(`txt.gz` is the text), other text members (`.cls`, `.meta.json`, an extra `.txt`) carried into `meta` verbatim,
and members no stage reads (`.npy`, `.mp`, `.seg.png`) counted `ignored_member:<ext>` for their source.
`inputs[].fields` may name the members: `{text: caption.txt, image: png}`."""
from __future__ import annotations

import hashlib
from typing import Iterator

from vlmloom.curation import readers
from vlmloom.curation.formats import Format, ReadContext, finish, register, rejection
from vlmloom.curation.readers import InvalidRecord
from vlmloom.schemas.records import Rejection, Sample


def member_digest(files: dict[str, bytes]) -> str:
    """sha256 of a record's raw members: every extension and its bytes, in name order."""
    h = hashlib.sha256()
    for ext in sorted(files):
        h.update(ext.encode("utf-8", "surrogateescape") + b"\0" + hashlib.sha256(files[ext]).digest())
    return h.hexdigest()


class WebDataset(Format):
    name = "webdataset"
    uses = ("image", "text", "json")

    def read(self, unit: str, ctx: ReadContext) -> Iterator[Sample | Rejection]:
        try:
            fh = ctx.open(unit)
        except OSError as exc:
            yield rejection(ctx.source, f"{readers.posixpath.basename(unit)}:<tar>", "read_error",
                            f"{unit}: {type(exc).__name__}: {exc}")
            return
        with fh:
            for item in readers.iter_tar_records(fh, unit, ctx.local_file(unit)):
                if isinstance(item, tuple):
                    yield rejection(ctx.source, *item)
                else:
                    yield record(item, ctx)


def record(raw: readers.RawRecord, ctx: ReadContext) -> Sample | Rejection:
    """One tar or folder record → a Sample (checked by `finish`) or a Rejection."""
    sample = readers.record_to_sample(raw, ctx.source, ctx.kind, dict(ctx.fields), ctx.count, ctx.answer_lists)
    if isinstance(sample, Rejection):
        return sample
    try:
        return finish(sample, raw.uri, member_digest(raw.files))
    except InvalidRecord as exc:
        return rejection(ctx.source, sample.source_id, exc.reason, exc.detail)


register(WebDataset())
