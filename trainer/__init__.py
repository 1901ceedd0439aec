"""vlmloom.trainer: DeepSpeed training of GLM-4.1V-style models on packed shards.

    config.py      TrainConfig (frozen, keyword-only; YAML + --set KEY=VALUE overrides)
    cli.py         `vlmloom train --config train.yaml [--data DIR] [--output DIR] [--model DIR] [--set KEY=VALUE ...]`
    loop.py        train(config, source=None) -> summary: the one training loop
    model.py       load_model / tiny_glm4v_config / build_tiny_model_dir / freeze_parts / attention choice
    data.py        PackedCollator (records -> tensors, images via Glm4vImageProcessorPil), loader with resume
    loss.py        CausalLMLoss (token-level loss sum, label positions only), step-level normalisation
    attention.py   `vlmloom_varlen`: packed attention on torch.nn.attention.varlen.varlen_attn
    checkpoint.py  exact-resume checkpoints (DeepSpeed states + RNG + reader state), Hugging Face export
    metrics.py     FLOPs / MFU, JSONL + TensorBoard
Only this package imports deepspeed.
"""
