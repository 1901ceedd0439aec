"""Reward throughput: scores/s per domain, in-process (`workers: 0`) vs the killable process pool.

    .venv/bin/python bench/reward_throughput.py                     # 2,000 items per domain, pool of 2 (CPU)
    .venv/bin/python bench/reward_throughput.py --n 5000 --workers 4

Items are generated here: well-formed responses, about half of them correct, with realistic answers per
domain (fractions and LaTeX for math, chart numbers, option letters, 200-character OCR lines, 1–3 boxes, GUI
actions, short text). Each cell is one `score_batch` call on a RewardSystem that has already scored a warm-up
batch (pool start-up and math-verify imports are not counted). Math runs in a worker in both columns: it is
sandboxed by design; `workers: 0` then means a pool of one.
"""
from __future__ import annotations

import argparse
import random
import time

from vlmloom.trainer.rewards import RewardConfig, RewardItem, RewardSystem


def respond(answer: str) -> str:
    return f"<think>{'step ' * 200}</think><answer>So: <|begin_of_box|>{answer}<|end_of_box|></answer>"


def make_items(domain: str, n: int, rng: random.Random) -> list[RewardItem]:
    items = []
    for i in range(n):
        right = rng.random() < 0.5
        if domain == "math":
            a, b = rng.randint(1, 50), rng.randint(2, 60)
            truth = f"\\frac{{{a}}}{{{b}}}"
            pred = f"{a / b:.6f}" if right else f"\\frac{{{a + 1}}}{{{b}}}"
            items.append(RewardItem(f"{i}", domain, respond(pred), truth))
        elif domain == "chart":
            value = rng.uniform(1, 1e5)
            pred = f"{value * (1.005 if right else 1.2):,.2f}"
            items.append(RewardItem(f"{i}", domain, respond(pred), f"{value:.2f}"))
        elif domain == "choice":
            options = [f"option text {k}" for k in range(4)]
            truth = "ABCD"[rng.randrange(4)]
            pred = truth if right else options[(ord(truth) - 64) % 4]
            items.append(RewardItem(f"{i}", domain, respond(pred), truth, options=options))
        elif domain == "ocr":
            line = "".join(rng.choice("abcdefghij klmnop") for _ in range(200))
            pred = line if right else line[:150] + "x" * 50
            items.append(RewardItem(f"{i}", domain, respond(pred), line))
        elif domain == "grounding":
            boxes = []
            for _ in range(rng.randint(1, 3)):
                x, y = rng.randint(0, 800), rng.randint(0, 800)
                boxes.append([x, y, x + rng.randint(20, 199), y + rng.randint(20, 199)])
            shift = 0 if right else 150
            pred = ", ".join(f"[{b[0] + shift},{b[1]},{min(1000, b[2] + shift)},{b[3]}]" for b in boxes)
            items.append(RewardItem(f"{i}", domain, respond(pred), boxes))
        elif domain == "gui":
            x, y = rng.randint(0, 900), rng.randint(0, 900)
            truth = f"click(box=[{x},{y},{x + 50},{y + 40}])"
            pred = f"click(point=[{x + 25 if right else x + 80},{y + 20}])"
            items.append(RewardItem(f"{i}", domain, respond(pred), truth))
        else:
            word = rng.choice(["Paris", "blue", "forty two", "the left one"])
            items.append(RewardItem(f"{i}", domain, respond(word if right else word + "s"), word.lower()))
    return items


def measure(domain: str, items: list[RewardItem], workers: int) -> tuple[float, float]:
    with RewardSystem(RewardConfig(workers=workers)) as system:
        system.score_batch(items[:20])  # warm-up: pool start, imports
        start = time.perf_counter()
        results = system.score_batch(items)
        elapsed = time.perf_counter() - start
    return len(items) / elapsed, sum(r.score for r in results) / len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="items per domain")
    parser.add_argument("--workers", type=int, default=2, help="pool size of the pool column")
    parser.add_argument("--domains", default="math,chart,choice,ocr,grounding,gui,text")
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"{'domain':<11}{'n':>7}{'in-process/s':>14}{f'pool({args.workers})/s':>12}{'mean score':>12}")
    for domain in args.domains.split(","):
        items = make_items(domain, args.n, rng)
        local, mean = measure(domain, items, 0)
        pooled, mean_pool = measure(domain, items, args.workers)
        assert abs(mean - mean_pool) < 1e-9, "pool and in-process must agree"
        print(f"{domain:<11}{len(items):>7}{local:>14.0f}{pooled:>12.0f}{mean:>12.3f}")


if __name__ == "__main__":
    main()
