"""Configuration of the model-backed curation stages, apart from their Beam code.

`curate` imports this module to read the job YAML; `pipelines/model_stages.py` (which imports Beam's
RunInference, and through it torch) is imported only when a model stage is enabled, so that Beam
worker processes of a job without model stages do not pay for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from vlmloom.curation.clip import ClipConfig
from vlmloom.curation.concepts import ConceptConfig
from vlmloom.curation.contamination import ContaminationConfig
from vlmloom.curation.grounding import GroundingConfig
from vlmloom.curation.ocr import OcrConfig
from vlmloom.curation.recaption import RecaptionConfig


@dataclass(frozen=True, kw_only=True)
class ModelStagesConfig:
    clip: ClipConfig = ClipConfig()  # CLIP/SigLIP image-text filter (needs clip.model_path)
    concepts: ConceptConfig = ConceptConfig()  # MetaCLIP-style concept balancing (no model)
    contamination: ContaminationConfig = ContaminationConfig()  # benchmark decontamination (needs benchmarks)
    recaption: RecaptionConfig = RecaptionConfig()  # VLM recaptioning (needs a server or a model dir)
    ocr: OcrConfig = OcrConfig()  # OCR annotation (rapidocr ships its models)
    grounding: GroundingConfig = GroundingConfig()  # grounding boxes from OCR / GUI elements / a detector

    def any_enabled(self) -> bool:
        return any(stage.enabled for stage in (self.clip, self.concepts, self.contamination, self.recaption,
                                               self.ocr, self.grounding))


def describe_disabled(config: ModelStagesConfig) -> list[str]:
    """One human line per stage that is off, saying what it needs and how to turn it on."""
    lines = []
    c = config
    if not c.clip.enabled:
        need = "no clip.model_path" if not c.clip.model_path else "clip.enabled is false"
        lines.append(f"clip: off ({need}; set models.clip.enabled=true models.clip.model_path=DIR (a local CLIPModel/SiglipModel "
                     "directory) to enable)")
    if not c.concepts.enabled:
        lines.append("concepts: off (set models.concepts.enabled=true to enable; needs no model, uses the shipped "
                     "vocabulary unless models.concepts.vocabulary_path=FILE)")
    if not c.contamination.enabled:
        need = "no contamination.benchmarks" if not c.contamination.benchmarks else "contamination.enabled is false"
        lines.append(f"contamination: off ({need}; set models.contamination.enabled=true and "
                     "models.contamination.benchmarks=[{name: NAME, path: PARQUET_OR_DIR}] to enable)")
    if not c.recaption.enabled:
        need = "no recaption.base_url or recaption.model_path" if not c.recaption.configured else \
            "recaption.enabled is false"
        lines.append(f"recaption: off ({need}; set models.recaption.enabled=true with models.recaption.base_url=URL "
                     "(OpenAI-compatible server) or models.recaption.backend=transformers models.recaption.model_path=DIR to enable)")
    if not c.ocr.enabled:
        lines.append("ocr: off (set models.ocr.enabled=true to enable; the default rapidocr backend ships its models)")
    if not c.grounding.enabled:
        lines.append("grounding: off (set models.grounding.enabled=true to enable; boxes come from OCR lines and "
                     "meta.elements, add 'detector' to models.grounding.sources with models.grounding.detector_model_path=DIR "
                     "for natural images)")
    elif "detector" in c.grounding.sources and not c.grounding.detector_model_path:
        lines.append("grounding.detector: off (no models.grounding.detector_model_path; set it to a local zero-shot "
                     "detector dir to enable)")
    return lines
