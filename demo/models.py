"""Randomly initialised tiny models saved to a directory, for tests and benchmarks (no download).

    save_random_clip(path, size, family)  → CLIPModel / SiglipModel + tokenizer + PIL image processor
    save_random_vlm(path)                 → a tiny LLaVA image-text-to-text model with a chat template

Scores and captions from them are meaningless; shapes, costs and the loading code paths are real.
"""
from __future__ import annotations

RANDOM_SIZES = {
    # name: (vision width, layers, heads, image size, patch, text width, text layers, text heads, projection)
    "tiny": (32, 2, 2, 32, 8, 32, 2, 2, 16),
    "vit-b-32": (768, 12, 12, 224, 32, 512, 12, 8, 512),  # the shape of openai/clip-vit-base-patch32
}


def save_random_clip(path: str, size: str = "tiny", family: str = "clip", seed: int = 0) -> str:
    """Save a randomly initialised CLIPModel/SiglipModel with a word-level tokenizer and a PIL image
    processor to `path` (no download). Scores from it are meaningless; shapes and costs are real."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast,
                              SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor)

    vw, vl, vh, image_size, patch, tw, tl, th, proj = RANDOM_SIZES[size]
    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + sorted(set(
        "a an the of on in with and photo picture image dog cat car red blue green tree house person man woman "
        "child street beach sky water table chair book screen text document chart sign white black small large "
        "two three near under over next to sitting standing running".split()))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                             special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    max_tokens = 77 if family == "clip" else 64
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", unk_token="[UNK]", model_max_length=max_tokens)
    vocab = 49408 if size != "tiny" else len(words)
    text = dict(vocab_size=vocab, hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=tl,
                num_attention_heads=th, max_position_embeddings=max_tokens, pad_token_id=0, bos_token_id=2,
                eos_token_id=3)
    vision = dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
                  image_size=image_size, patch_size=patch)
    torch.manual_seed(seed)
    if family == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj))
        processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}), tokenizer=fast)
    elif family == "siglip":
        text["projection_size"] = vw  # SigLIP's text head projects to the vision width
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(
            size={"height": image_size, "width": image_size}), tokenizer=fast)
    else:
        raise ValueError(f"family {family!r}: use clip or siglip")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_random_vlm(path: str, seed: int = 0) -> str:
    """Save a tiny randomly initialised LLaVA (CLIP vision tower + Llama) with a word-level tokenizer,
    a PIL image processor and a chat template to `path`: a local image-text-to-text model for tests."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    words = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:"] + sorted(set(
        "describe this image in detail mention the objects any visible text and setting a red car dog cat photo "
        "of on with blue green sky tree house person".split()))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'] | upper }}: {% if m['content'] is string %}{{ m['content'] }}"
                "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}"
                "{% endif %}{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16},
                                                                     crop_size={"height": 16, "width": 16}),
                               tokenizer=fast, patch_size=8, vision_feature_select_strategy="default",
                               chat_template=template, num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(words), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_id=4, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
