"""Sequence builder: GLM-4.1V rendering, label masks, reason codes, and M-RoPE rows = get_rope_index."""
import numpy as np
import pytest
import torch

from vlmloom.packing import tokenizer as T
from vlmloom.packing.builder import BuilderConfig, SequenceBuilder
from vlmloom.demo.records import make_image, synthetic_samples
from vlmloom.packing.pack import _fit
from vlmloom.schemas.packed import IGNORE_INDEX
from vlmloom.schemas.records import Annotations, Grounding, Message, Rejection, Sample, Segment

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [t for s in synthetic_samples(60, seed=1) for t in (s.text, *(m.content for m in s.messages)) if t]
    out = str(tmp_path_factory.mktemp("tok"))
    T.train_tokenizer(texts, out, vocab_size=512)
    return T.load_tokenizer(out)


@pytest.fixture(scope="module")
def builder(tok):
    return SequenceBuilder(tok)


@pytest.fixture(scope="module")
def rope_model(tok):
    config = transformers.Glm4vConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1),
        vision_config=dict(depth=1, hidden_size=16, num_heads=1, intermediate_size=16, out_hidden_size=32),
        image_token_id=tok.convert_tokens_to_ids(T.IMAGE))
    return transformers.Glm4vModel(config)


def qa(key="k", answer="7", content=None, images=1, user="<image>What is it?"):
    content = content if content is not None else (
        f"<think>count them</think><answer>It is <|begin_of_box|>{answer}<|end_of_box|></answer>")
    return Sample(key=key, source="t", source_id=key, kind="qa", answer=answer,
                  images=[make_image(40, 30, i) for i in range(images)],
                  messages=[Message("user", user), Message("assistant", content)])


def test_special_tokens_are_single_ids_and_round_trip(tok, tmp_path):
    ids = T.special_token_ids(tok)
    assert set(T.SPECIAL_TOKENS) <= set(ids)
    assert tok.pad_token == T.ENDOFTEXT and tok.pad_token_id == ids[T.ENDOFTEXT]
    text = "<think>a</think><answer><|begin_of_box|>3<|end_of_box|></answer>"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # reasoning/box tokens are single ids that survive skip_special_tokens (verifiers read the box)
    assert tok.decode(tok.encode(f"[gMASK]<sop>{text}<|endoftext|>", add_special_tokens=False),
                      skip_special_tokens=True) == text
    assert len(tok.encode(text, add_special_tokens=False)) == 8
    assert ids[T.THINK] in tok.encode("<think>", add_special_tokens=False)


def test_rope_rows_equal_get_rope_index(builder, rope_model):
    samples = synthetic_samples(12, seed=5, image_side=(20, 300)) + [
        Sample(key="wide", source="t", source_id="w", kind="caption", images=[make_image(400, 2, 1)], text="a line"),
        qa("two", images=2, user="<image> and <image>: same?")]
    for s in samples:
        b = builder.build(s)
        assert not isinstance(b, Rejection), b
        ids = torch.as_tensor(b.input_ids, dtype=torch.long)[None]
        ref, _ = rope_model.get_rope_index(ids, mm_token_type_ids=(ids == builder.image_token_id).long(),
                                           image_grid_thw=torch.as_tensor(b.image_grid_thw, dtype=torch.long))
        assert np.array_equal(ref[:, 0].numpy(), b.rope_position_ids), s.key
        assert np.count_nonzero(b.input_ids == builder.image_token_id) == int(b.image_grid_thw.prod(1).sum()) // 4


def test_caption_rendering_and_labels(builder, tok):
    s = Sample(key="c", source="t", source_id="c", kind="caption", images=[make_image(112, 112, 0)], text="a red cat")
    b = builder.build(s)
    ids = builder.ids
    assert b.input_ids[:3].tolist() == [ids[T.GMASK], ids[T.SOP], ids[T.BEGIN_OF_IMAGE]]
    assert b.image_grid_thw.tolist() == [[1, 8, 8]]  # 112 px = 8 patches of 14; 2x2 merge -> 16 tokens
    assert b.input_ids[3:19].tolist() == [ids[T.IMAGE]] * 16 and b.input_ids[19] == ids[T.END_OF_IMAGE]
    assert tok.decode(b.input_ids[20:-1]) == "a red cat" and b.input_ids[-1] == ids[T.ENDOFTEXT]
    trained = b.labels != IGNORE_INDEX
    assert not trained[:20].any() and trained[20:].all()
    assert np.array_equal(b.labels[trained], b.input_ids[trained])


def test_recaption_is_used_when_chosen(builder, tok):
    s = Sample(key="r", source="t", source_id="r", kind="caption", images=[make_image(56, 56, 0)], text="old",
               recaption="a new caption", signals={"text_choice": "recaption"})
    b = builder.build(s)
    assert tok.decode(b.input_ids[b.labels != IGNORE_INDEX][:-1]) == "a new caption"


def test_qa_labels_only_assistant_turn(builder, tok):
    s = qa()
    b = builder.build(s)
    text = tok.decode(b.input_ids, skip_special_tokens=False)
    assert text.startswith("[gMASK]<sop><|user|>\n<|begin_of_image|><|image|>")
    assert "<|end_of_image|>What is it?<|assistant|>\n<think>" in text
    trained = tok.decode(b.labels[b.labels != IGNORE_INDEX], skip_special_tokens=False)
    assert trained == s.messages[1].content + T.ENDOFTEXT


def test_multi_turn_trains_on_turn_terminators(builder, tok):
    s = Sample(key="m", source="t", source_id="m", kind="qa", messages=[
        Message("system", "be brief"), Message("user", "hi"), Message("assistant", "hello"),
        Message("user", "bye"), Message("assistant", "ciao")])
    b = builder.build(s)
    trained = tok.decode(b.labels[b.labels != IGNORE_INDEX], skip_special_tokens=False)
    assert trained == "hello<|user|>ciao<|endoftext|>"
    assert tok.decode(b.input_ids, skip_special_tokens=False).startswith("[gMASK]<sop><|system|>\nbe brief<|user|>\nhi")


def test_interleaved_order(builder, tok):
    s = Sample(key="i", source="t", source_id="i", kind="interleaved", images=[make_image(30, 30, 0), make_image(60, 30, 1)],
               segments=[Segment("text", "one"), Segment("image", image_index=1), Segment("text", "two")])
    assert isinstance(builder.build(s), Rejection)  # images must appear in index order (token order = image order)
    s.segments = [Segment("text", "one"), Segment("image", image_index=0), Segment("text", "two"),
                  Segment("image", image_index=1)]
    b = builder.build(s)
    assert b.image_grid_thw.tolist() == [[1, 6, 6], [1, 4, 8]]
    assert tok.decode(b.input_ids, skip_special_tokens=False).startswith("[gMASK]<sop>one<|begin_of_image|>")


def test_grounding_boxes_rendered(builder, tok):
    s = Sample(key="g", source="t", source_id="g", kind="grounding", images=[make_image(56, 56, 0)],
               annotations=Annotations(grounding=[Grounding("the cat", [10, 20, 300, 400])]))
    b = builder.build(s)
    assert tok.decode(b.input_ids[b.labels != IGNORE_INDEX], skip_special_tokens=False) == \
        "the cat<|begin_of_box|>[10,20,300,400]<|end_of_box|><|endoftext|>"


@pytest.mark.parametrize("sample,reason", [
    (qa(content="It is 7"), "malformed_cot"),
    (qa(content="<think>a</think><answer>7</answer>"), "box_count_mismatch"),
    (qa(content="<think>a</think><answer><|begin_of_box|>7<|end_of_box|><|begin_of_box|>8<|end_of_box|></answer>"),
     "box_count_mismatch"),
    (qa(content="<think>a<think></think><answer><|begin_of_box|>7<|end_of_box|></answer>"), "malformed_cot"),
    (qa(user="<image><image> two?"), "image_placeholder_mismatch"),
    (Sample(key="n", source="t", source_id="n", kind="qa", messages=[Message("user", "hi")]), "no_assistant_turn"),
    (Sample(key="e", source="t", source_id="e", kind="caption", images=[make_image(30, 30, 0)]), "empty_text"),
    (Sample(key="s", source="t", source_id="s", kind="caption", text="sneaky <|image|> token"), "special_token_in_text"),
    (Sample(key="v", source="t", source_id="v", kind="video", text="x"), "missing_video"),
    (Sample(key="a", source="t", source_id="a", kind="caption", text="x",
            images=[make_image(1, 1, 0).__class__(width=1, height=300, bytes=b"x", format="png")]),
     "image_size_unsupported"),
    (Sample(key="b", source="t", source_id="b", kind="caption", text="x",
            images=[make_image(1, 1, 0).__class__(width=30, height=30, bytes=None)]), "missing_image_bytes"),
])
def test_rejections_have_reasons(builder, sample, reason):
    r = builder.build(sample)
    assert isinstance(r, Rejection) and r.reason == reason and r.stage == "pack" and r.key == sample.key


def test_plain_qa_without_answer_needs_no_cot(builder):
    s = Sample(key="p", source="t", source_id="p", kind="qa", messages=[Message("user", "hi"), Message("assistant", "yo")])
    assert not isinstance(builder.build(s), Rejection)
    strict = SequenceBuilder(builder.tokenizer, BuilderConfig(require_cot=True))
    assert strict.build(s).reason == "malformed_cot"


def test_overlong_policy(builder):
    text = " ".join(["cat dog"] * 200)
    s = Sample(key="l", source="t", source_id="l", kind="caption", images=[make_image(56, 56, 0)], text=text)
    b = builder.build(s)
    assert _fit(b, s, builder, 100, "drop").reason == "too_long"
    cut = _fit(b, s, builder, 100, "truncate")
    assert len(cut) == 100 and cut.truncated_from == len(b) and len(cut.images) == 1
    assert np.array_equal(cut.rope_position_ids, b.rope_position_ids[:, :100])
    assert _fit(b, s, builder, 5, "truncate").reason == "too_long_image_cut"  # the cut would split the image
    q = builder.build(qa())
    assert _fit(q, qa(), builder, len(q) - 1, "truncate").reason == "too_long"  # SFT is never truncated


def test_kind_selection_for_sft_sets(builder):
    sft_only = SequenceBuilder(builder.tokenizer, BuilderConfig(kinds=["qa"]))
    caption = Sample(key="c", source="t", source_id="c", kind="caption", text="a cat", images=[make_image(56, 56, 0)])
    assert sft_only.build(caption).reason == "kind_not_selected"
    assert not isinstance(sft_only.build(qa()), Rejection)
    assert not isinstance(builder.build(caption), Rejection)


def curated_ocr_sample(key="ocr1", lines=(("Total 12.50", [100, 200, 400, 260]), ("Thank you", [100, 300, 380, 350]),
                                          ("Cafe Luna", [90, 40, 500, 110]))):
    """An OCR sample as curation leaves it: OCR lines, and the grounding stage's boxes and Q/A turns."""
    from vlmloom.curation.grounding import GroundingAnnotator, GroundingConfig
    from vlmloom.schemas.records import OcrLine

    s = Sample(key=key, source="t", source_id=key, kind="ocr", images=[make_image(120, 80, 3)],
               text="\n".join(text for text, _ in lines),
               annotations=Annotations(ocr=[OcrLine(text, list(box)) for text, box in lines]))
    verdict = GroundingAnnotator(GroundingConfig(enabled=True, sources=("ocr",), max_turns=2)).judge(s)
    assert verdict.keep and len(s.messages) == 2 + 4 and len(s.annotations.grounding) == 3
    return s


def test_curated_grounding_turns_are_trained_as_chat(builder, tok):
    """The turns curation writes are rendered as chat: the transcription answer and every assistant box target
    are the labelled tokens; the questions and the image are not. Before, the sample was a plain document."""
    from vlmloom.curation.grounding import TRANSCRIBE_PROMPT, render_box

    s = curated_ocr_sample()
    b = builder.build(s)
    assert not isinstance(b, Rejection) and b.rendered_as == "chat" and b.turns_unusable == ""
    labelled = tok.decode(b.input_ids[b.labels != IGNORE_INDEX], skip_special_tokens=False)
    answers = [m.content for m in s.messages if m.role == "assistant"]
    assert answers == [s.text] + [render_box(g.box) for g in s.annotations.grounding[:2]]
    assert labelled == "".join(f"{a}<|user|>" for a in answers[:-1]) + answers[-1] + "<|endoftext|>"
    full = tok.decode(b.input_ids, skip_special_tokens=False)
    assert TRANSCRIBE_PROMPT in full and 'Locate "Total 12.50"' in full
    assert "Read all" not in labelled and "Locate" not in labelled
    # the transcription is trained now; what the turns leave out is the third box (max_turns=2)
    assert not b.text_left_out and b.boxes_left_out == 1


def test_unusable_turns_fall_back_to_document_with_a_reason(tok):
    """Turns that cannot be rendered (two <image> placeholders, one image) train as the document, boxes included,
    with the reason kept for the report; builder.turns=document asks for that rendering outright."""
    s = curated_ocr_sample("ocr2")
    s.messages[0].content = "<image><image>" + s.messages[0].content
    b = SequenceBuilder(tok).build(s)
    assert b.rendered_as == "document" and b.turns_unusable == "image_placeholder_mismatch"
    labelled = tok.decode(b.input_ids[b.labels != IGNORE_INDEX], skip_special_tokens=False)
    for g in s.annotations.grounding:
        assert f"{g.phrase}<|begin_of_box|>[{','.join(map(str, g.box))}]<|end_of_box|>" in labelled
    d = SequenceBuilder(tok, BuilderConfig(turns="document")).build(curated_ocr_sample("ocr3"))
    assert d.rendered_as == "document" and d.turns_unusable == ""
    with pytest.raises(Exception, match="builder.turns"):
        SequenceBuilder(tok, BuilderConfig(turns="both"))
