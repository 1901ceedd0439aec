"""The last curate stage: does the record carry what pack needs to train on it, as its kind declares?

Sample → Verdict: dropped with pack's own reason code when its kind's need (`Kind.needs` in schemas/kinds.py) is
unmet after every other stage had its chance to fill it (OCR writes transcripts, recaption captions, grounding
boxes and turns): a caption, OCR, grounding, GUI or interleaved record without any text → `empty_text`; a qa
record with neither a final assistant turn nor an `answer` → `no_assistant_turn`. So what curate keeps, pack
renders; an image without text is rejected here rather than packed as images followed by <|endoftext|>.
"""
from __future__ import annotations

from vlmloom.curation.base import Verdict
from vlmloom.schemas.kinds import unmet_need
from vlmloom.schemas.records import Sample

STAGE = "renderable"


def judge_renderable(sample: Sample) -> Verdict:
    unmet = unmet_need(sample)
    if unmet is None:
        return Verdict.ok()
    reason, detail = unmet
    return Verdict.drop(reason, detail)
