"""vlmloom.packing: curated samples → GLM-4.1V token sequences → fixed-length packed shards → training stream.

    curated.py    iter_curated_samples(dir): read a curated directory back into Samples
    tokenizer.py  GLM-4.1V special-token strings; train_tokenizer() for the demo BPE
    vision.py     image size → (t, h, w) grid → <|image|> count, as Glm4vImageProcessorPil
    builder.py    SequenceBuilder: Sample → BuiltSample (ids, labels, M-RoPE rows) or Rejection
    packers.py    PACKERS registry + plan_bins(): best_fit_decreasing, first_fit_decreasing, greedy
    mixture.py    recipes: per-source multipliers / token shares, smooth interleave
    balance.py    attention-cost balancing of sequences across data-parallel ranks
    shards.py     packed-entry encoding; shard writer/reader over schemas/tars.py
    pack.py       pack(PackConfig) -> report: the whole step
    reader.py     PackedDataset: rank/worker split, shuffle buffer, exact resume
    cli.py        main(argv) for `vlmloom pack`
"""
