"""judge_heuristics and judge_language: every reason code, disabled checks, the lazily loaded fastText model."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from vlmloom.curation.decode import DecodeConfig, decode_sample
from vlmloom.curation.filters import (
    HeuristicConfig,
    LanguageConfig,
    LanguageIdentifier,
    default_model_path,
    judge_heuristics,
    judge_language,
    repetition_ratio,
)
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import ImageRef, Message, Sample, Segment

ENGLISH = "A brown dog is running across a green field on a sunny afternoon."
GERMAN = "Ein brauner Hund läuft an einem sonnigen Nachmittag über eine grüne Wiese."
CHINESE = "一只棕色的狗在阳光明媚的下午跑过绿色的草地。"


def measured(width=200, height=100, pixel_std=40.0, text=ENGLISH, kind="caption") -> Sample:
    """A sample as decode_sample leaves it: the image signals are set."""
    return Sample(key="k", source="s", source_id="1", kind=kind, text=text,
                  signals={"width": width, "height": height, "pixel_std": pixel_std})


def reason(sample: Sample, **config) -> str | None:
    return judge_heuristics(sample, HeuristicConfig(**config)).reason


# --- heuristics -------------------------------------------------------------------------------------
def test_clean_caption_sample_is_kept_with_caption_signals():
    verdict = judge_heuristics(measured(), HeuristicConfig())
    assert verdict.keep and verdict.signals == {"caption_chars": len(ENGLISH), "caption_repetition": 0.0}


def test_image_too_small():
    verdict = judge_heuristics(measured(width=300, height=63), HeuristicConfig())
    assert verdict.reason == "image_too_small"
    assert verdict.detail == "image 0: 300x63, shorter side 63 < min_side 64"
    assert reason(measured(width=64, height=64)) is None
    assert reason(measured(width=10, height=10), min_side=-1) is None


def test_aspect_ratio_too_large():
    verdict = judge_heuristics(measured(width=1100, height=100), HeuristicConfig())
    assert verdict.reason == "aspect_ratio_too_large" and "11.00 (1100x100)" in verdict.detail
    assert reason(measured(width=100, height=1000)) is None  # exactly 10 is allowed
    assert reason(measured(width=100, height=5000), max_aspect_ratio=-1) is None


def test_near_solid_image():
    verdict = judge_heuristics(measured(pixel_std=1.5), HeuristicConfig())
    assert verdict.reason == "near_solid_image" and verdict.detail == "image 0: pixel std 1.500 < min_pixel_std 2.0"
    assert reason(measured(pixel_std=0.0), min_pixel_std=-1) is None


def test_caption_empty_and_too_short():
    assert reason(measured(text=None)) == "caption_empty"
    assert reason(measured(text=" \n\t ")) == "caption_empty"
    verdict = judge_heuristics(measured(text="  a dog "), HeuristicConfig(min_caption_chars=10))
    assert verdict.reason == "caption_too_short" and verdict.detail == "caption has 5 chars < min_caption_chars 10"
    assert reason(measured(text=""), min_caption_chars=0) is None


def test_caption_too_long():
    long_text = " ".join(f"w{i}" for i in range(1500))  # 7390 chars, no repeats
    verdict = judge_heuristics(measured(text=long_text), HeuristicConfig())
    assert verdict.reason == "caption_too_long" and verdict.detail == f"caption has {len(long_text)} chars > max_caption_chars 4000"
    assert reason(measured(text=long_text), max_caption_chars=-1) is None


def test_caption_repetitive():
    assert repetition_ratio("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repetition_ratio("one two") == 0.0
    verdict = judge_heuristics(measured(text="buy now buy now buy now buy now buy now"), HeuristicConfig())
    assert verdict.reason == "caption_repetitive" and verdict.signals["caption_repetition"] == 0.75
    assert reason(measured(text="buy now buy now buy now buy now"), max_repetition_ratio=-1) is None


def test_caption_rules_for_caption_kinds_document_rules_for_the_others():
    """The kinds table picks the rule set: an empty text is no reason for a document, a long one is no caption."""
    assert reason(measured(text=None, kind="interleaved")) is None
    assert reason(measured(text=None, kind="ocr")) is None  # OCR may still fill it; renderable judges emptiness
    assert reason(measured(text="x" * 10_000, kind="qa")) is None
    assert reason(measured(text="x" * 10_000, kind="caption")) == "caption_too_long"
    verdict = judge_heuristics(measured(text=ENGLISH, kind="ocr"), HeuristicConfig())
    assert verdict.keep and verdict.signals == {"document_chars": len(ENGLISH), "document_repetition": 0.0}


def test_document_rules_judge_every_kinds_texts():
    numbers = " ".join(["1.1"] * 40)  # a document of "1.1 1.1 1.1 …"
    document = Sample(key="k", source="s", source_id="1", kind="interleaved",
                      segments=[Segment("text", numbers)])
    verdict = judge_heuristics(document, HeuristicConfig())
    assert (verdict.reason, verdict.signals["document_chars"]) == ("document_repetitive", len(numbers))
    assert verdict.signals["document_repetition"] == round(1 - 1 / 78, 4)  # 80 words "1": 78 trigrams, one distinct
    # repetition across segments counts: one "buy now" per segment
    spread = Sample(key="k", source="s", source_id="1", kind="interleaved",
                    segments=[Segment("text", "buy now")] * 6)
    assert reason(spread) == "document_repetitive"
    assert reason(spread, max_document_repetition_ratio=-1) is None
    chat = Sample(key="k", source="s", source_id="1", kind="qa",
                  messages=[Message("user", "<image>Describe it."), Message("assistant", "spam " * 30)])
    assert reason(chat) == "document_repetitive"
    long_chat = Sample(key="k", source="s", source_id="1", kind="qa", answer=" ".join(f"w{i}" for i in range(30)))
    verdict = judge_heuristics(long_chat, HeuristicConfig(max_document_chars=100))
    # w0..w29 and 29 spaces
    assert verdict.reason == "document_too_long" and verdict.detail == "texts have 109 chars > max_document_chars 100"


def test_samples_without_image_signals_skip_image_checks():
    sample = Sample(key="k", source="s", source_id="1", kind="qa", text="What is 2+2?")
    assert judge_heuristics(sample, HeuristicConfig()).keep


def test_heuristics_read_what_decode_measured():
    rng = np.random.default_rng(0)
    images = {
        "tiny": Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)),
        "near_solid": Image.new("RGB", (128, 128), (90, 90, 90)),
        "fine": Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)),
    }
    reasons = {}
    for name, image in images.items():
        out = io.BytesIO()
        image.save(out, format="PNG")
        sample = Sample(key=name, source="s", source_id=name, text=ENGLISH, images=[ImageRef(bytes=out.getvalue())])
        verdict = decode_sample(sample, DecodeConfig())
        assert verdict.keep
        verdict.merge_into(sample, "decode")
        reasons[name] = judge_heuristics(sample, HeuristicConfig()).reason
    assert reasons == {"tiny": "image_too_small", "near_solid": "near_solid_image", "fine": None}


def test_heuristic_config_validation():
    assert build_config(HeuristicConfig, {"min_side": -1, "max_document_chars": -1}).max_document_chars == -1
    with pytest.raises(ConfigError, match="min_side"):
        build_config(HeuristicConfig, {"min_side": 0})
    with pytest.raises(ConfigError, match="max_repetition_ratio"):
        build_config(HeuristicConfig, {"max_repetition_ratio": 1.5})
    with pytest.raises(ConfigError, match="raise max_caption_chars"):
        build_config(HeuristicConfig, {"min_caption_chars": 10, "max_caption_chars": 5})
    with pytest.raises(ConfigError, match="max_document_repetition_ratio"):
        build_config(HeuristicConfig, {"max_document_repetition_ratio": 2})
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(HeuristicConfig, {"kinds_needing_caption": ["caption"]})  # the kinds table decides now


# --- language ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def identifier() -> LanguageIdentifier:
    return LanguageIdentifier()


def text_sample(text: str | None, **kwargs) -> Sample:
    return Sample(key="k", source="s", source_id="1", text=text, **kwargs)


def test_predict_languages(identifier):
    assert [identifier.predict(t)[0] for t in (ENGLISH, GERMAN, CHINESE)] == ["en", "de", "zh"]
    lang, score = identifier.predict("first line\nsecond line of an English text\n")
    assert lang == "en" and 0.5 < score <= 1.0
    assert identifier.predict("") == ("und", 0.0)
    assert identifier.predict(" \n ") == ("und", 0.0)


def test_judge_language_records_signals(identifier):
    verdict = judge_language(text_sample(GERMAN), identifier, LanguageConfig())
    assert verdict.keep and verdict.signals["lang"] == "de" and 0.5 < verdict.signals["lang_score"] <= 1.0


def test_language_not_allowed(identifier):
    config = LanguageConfig(allowed=("en", "zh"))
    assert judge_language(text_sample(ENGLISH), identifier, config).keep
    assert judge_language(text_sample(CHINESE), identifier, config).keep
    verdict = judge_language(text_sample(GERMAN), identifier, config)
    assert verdict.reason == "language_not_allowed" and verdict.signals["lang"] == "de"
    assert verdict.detail.startswith("language de (") and verdict.detail.endswith("not in allowed ['en', 'zh']")


def test_language_low_confidence(identifier):
    verdict = judge_language(text_sample("ok 42 xyz qqq"), identifier, LanguageConfig(min_score=0.999))
    assert verdict.reason == "language_low_confidence" and verdict.signals["lang_score"] < 0.999


def test_no_text_is_kept_as_und(identifier):
    verdict = judge_language(text_sample(None), identifier, LanguageConfig(allowed=("en",), min_score=0.9))
    assert verdict.keep and verdict.signals == {"lang": "und", "lang_score": 0.0}


def test_too_few_words_are_und_not_a_guess(identifier):
    """fastText calls a two-word name some language with confidence; below language.min_words it is "und"."""
    config = LanguageConfig(allowed=("en",), min_score=0.5)
    for text in ("Kanye West", "Kim Minji", "Der Hund", "1.1 1.1 1.1 1.1"):
        verdict = judge_language(text_sample(text), identifier, config)
        assert verdict.keep and verdict.signals == {"lang": "und", "lang_score": 0.0}, text
    assert identifier.predict("Kanye West")[0] != "und"  # what the minimum protects against
    assert judge_language(text_sample("Kanye West"), identifier, LanguageConfig(min_words=2)).signals["lang"] != "und"
    assert judge_language(text_sample("Der Hund bellt"), identifier, LanguageConfig()).signals["lang"] == "de"
    assert judge_language(text_sample("一只猫"), identifier, LanguageConfig()).signals["lang"] != "und"  # 3 Han words
    with pytest.raises(ConfigError, match="min_words"):
        build_config(LanguageConfig, {"min_words": -1})


def test_every_kinds_texts_are_identified(identifier):
    document = Sample(key="k", source="s", source_id="1", kind="interleaved",
                      segments=[Segment("text", GERMAN), Segment("image", image_index=0)],
                      images=[ImageRef(sha256="a")])
    assert judge_language(document, identifier, LanguageConfig()).signals["lang"] == "de"
    answer_only = Sample(key="k", source="s", source_id="1", kind="qa", answer=CHINESE)
    assert judge_language(answer_only, identifier, LanguageConfig()).signals["lang"] == "zh"


def test_chat_samples_are_identified_from_their_messages(identifier):
    sample = text_sample(None, kind="qa", messages=[Message("user", "<image>Was zeigt dieses Bild? Beschreibe es bitte genau."),
                                                     Message("assistant", "Ein Hund läuft über eine grüne Wiese.")])
    assert judge_language(sample, identifier, LanguageConfig()).signals["lang"] == "de"


def test_identifier_pickles_without_the_model():
    fresh = LanguageIdentifier()
    blob = pickle.dumps(fresh)
    assert len(blob) < 500
    fresh.predict(ENGLISH)  # loads the model
    assert len(pickle.dumps(fresh)) < 500
    assert pickle.loads(pickle.dumps(fresh)).predict(GERMAN)[0] == "de"


def test_missing_model_names_the_path_and_the_fix(tmp_path):
    missing = str(tmp_path / "nope" / "lid.176.ftz")
    identifier = LanguageIdentifier(missing)  # constructing is free: nothing is loaded yet
    with pytest.raises(FileNotFoundError) as info:
        identifier.predict(ENGLISH)
    assert missing in str(info.value) and "language.model_path" in str(info.value)
    assert default_model_path().endswith("lid.176.ftz")


def test_language_config_validation():
    assert build_config(LanguageConfig, {"allowed": ["en", "zh"], "min_score": 0.5}).allowed == ("en", "zh")
    with pytest.raises(ConfigError, match="min_score"):
        build_config(LanguageConfig, {"min_score": 2})
    with pytest.raises(ConfigError, match="not a language code"):
        build_config(LanguageConfig, {"allowed": ["__label__en"]})
