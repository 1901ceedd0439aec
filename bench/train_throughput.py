"""Training throughput of packed vs padded batches of the same samples, per attention implementation.

Samples with a realistic length mix (captions with an image, interleaved documents, long texts) are laid out two
ways: packed into rows of L tokens (first-fit decreasing), and padded (one sample per row of L tokens). Every
row goes through the same DeepSpeed step (`vlmloom.trainer`: CausalLMLoss, token-normalised loss, ZeRO, torch
AdamW); batches are collated before timing, so the figures are the model's, not the data loader's.
Reported: real tokens/s (padding not counted), useful-FLOP MFU, padding fraction, peak memory (CUDA: peak
allocated; CPU: the process's peak RSS).

MFU = useful training FLOPs / step time / device peak (`vlmloom.trainer.metrics.step_flops`, MFU_FORMULA below):
3 × forward (backward = 2 × forward) of the real tokens only, so packed and padded rows of the same samples do the
same useful work; peak = the dense bf16 datasheet figure (H100/H200 SXM: 989 TFLOP/s).

GPU (GLM-4.1V-shaped ~1.9B model with random weights, bf16, L=8192, ZeRO-2):
    python bench/train_throughput.py --json bench_train.json
CPU (tiny model, fp32, L=512; checks the plumbing, figures are not meaningful for GPUs):
    DS_ACCELERATOR=cpu python bench/train_throughput.py
Packed video batches through the same model (bench/gpu_suite.sh part d): `--video` (h264 clips made with PyAV,
rendered by the packing builder at GLM-4.1V's frame sampling, packed; no padded layout). Without PyAV it prints why
and exits 0.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import sys
import time
import traceback

import numpy as np
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from vlmloom.schemas.config import build_config  # noqa: E402
from vlmloom.demo import packed as synthetic  # noqa: E402
from vlmloom.trainer.attention import register_varlen_attention, varlen_available  # noqa: E402
from vlmloom.trainer.config import TrainConfig  # noqa: E402
from vlmloom.trainer.data import PackedCollator  # noqa: E402
from vlmloom.trainer.loop import build_engine, deepspeed_config, init_distributed  # noqa: E402
from vlmloom.trainer.loss import CausalLMLoss, model_inputs, step_loss_scale  # noqa: E402
from vlmloom.trainer.metrics import peak_tflops, step_flops  # noqa: E402
from vlmloom.trainer.model import load_model  # noqa: E402

# GLM-4.1V-9B shapes scaled down to ~1.9B: same vocabulary, GQA ratio, head_dim 128, vision geometry.
GPU_MODEL = {
    "vocab_size": 151552, "hidden_size": 2048, "intermediate_size": 6912, "num_hidden_layers": 20,
    "num_attention_heads": 16, "num_key_value_heads": 2,
    "vision_hidden_size": 1536, "vision_depth": 8, "vision_heads": 12, "vision_intermediate_size": 4096,
}
CPU_MODEL = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
MFU_FORMULA = ("MFU = useful FLOPs / step time / peak; useful FLOPs = 3 x forward of the real tokens: "
               "2*layers*(attention projections + 3*hidden*intermediate)*tokens + 2*layers*heads*head_dim*sum(s^2) "
               "(causal attention per packed sample s) + 2*hidden*vocab*label_tokens (LM head at label positions) "
               "+ patches*(2*vision_depth*(4*h_v^2 + 3*h_v*i_v) + patch embedding); padding counts nothing")


def length_mix(n: int, seq_len: int, seed: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """(text tokens, image sizes) per sample: 50% captions (1 image, 30-300 text tokens), 30% interleaved
    documents (2 images, 300-2000 tokens, log-uniform), 20% long texts (1000 - seq_len/2 tokens)."""
    rng = np.random.default_rng(seed)
    scale = seq_len / 8192
    sizes = [(448, 448), (672, 448), (448, 672), (896, 672)] if scale >= 0.5 else [(56, 56), (84, 56)]
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            text = int(rng.integers(30, 300) * max(scale, 0.1))
            images = [sizes[int(rng.integers(len(sizes)))]]
        elif kind < 0.8:
            text = int(np.exp(rng.uniform(np.log(300), np.log(2000))) * max(scale, 0.1))
            images = [sizes[int(rng.integers(len(sizes)))] for _ in range(2)]
        else:
            text = int(rng.integers(1000, seq_len // 2) * max(scale, 0.1)) if scale >= 0.5 else int(
                rng.integers(seq_len // 8, seq_len // 2))
            images = []
        out.append((max(text, 8), images))
    return out


def first_fit_decreasing(samples: list[dict], seq_len: int) -> list[dict]:
    bins: list[list[dict]] = []
    space: list[int] = []
    for s in sorted(samples, key=lambda s: -len(s["input_ids"])):
        n = len(s["input_ids"])
        for i, free in enumerate(space):
            if n <= free:
                bins[i].append(s)
                space[i] -= n
                break
        else:
            bins.append([s])
            space.append(seq_len - n)
    return [synthetic.pack_samples(b, seq_len, key=f"p{i}") for i, b in enumerate(bins)]


def available_impls(device: torch.device) -> list[str]:
    impls = ["sdpa"]
    if device.type != "cuda" or varlen_available():
        impls.append("vlmloom_varlen")  # on CPU: the per-sample sdpa reference of the same function
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        impls.append("flash_attention_2")
    return impls


def peak_memory_gib(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(engine, model, batches, device, warmup: int, peak: float | None) -> dict:
    """`warmup` untimed rows, then every row of `batches` once (so both layouts cover the same samples)."""
    times, useful_flops, tokens, capacity = [], 0.0, 0, 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i, batch in enumerate(batches[:warmup] + batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss_sum, _ = engine(**model_inputs(batch, device))
        engine.backward(loss_sum * step_loss_scale(batch["stats"]["label_tokens"], 1), scale_wrt_gas=False)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
            useful_flops += step_flops(model.config, batch["stats"])
            tokens += batch["stats"]["tokens"]
            capacity += batch["stats"]["capacity"]
    total = sum(times)
    tflops = useful_flops / total / 1e12
    return {
        "rows": len(times), "tokens": tokens, "tokens_per_s": tokens / total, "step_s": total / len(times),
        "tflops": tflops, "mfu": tflops / peak if peak else None, "padding_fraction": 1 - tokens / capacity,
        "peak_mem_gib": peak_memory_gib(device),
        "loss": float(loss_sum.detach()) / max(batch["stats"]["label_tokens"], 1),
    }


def measure_or_error(engine, model, batches, device, warmup: int, peak: float | None) -> dict:
    """`measure`, or {"error": ...} when the rows fail (out of memory, or anything else: printed, then the next
    row runs, so one failing configuration does not lose the others' figures)."""
    try:
        return measure(engine, model, batches, device, warmup, peak)
    except torch.cuda.OutOfMemoryError as exc:
        row = {"error": f"out of memory: {str(exc).splitlines()[0][:200]}", "out_of_memory": True}
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON with its traceback in the log
        traceback.print_exc()
        row = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    engine.zero_grad()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def video_support() -> tuple[bool, str]:
    """Whether a packed video batch can be built here: PyAV decodes the clips (the device image lacks it: it is
    carried as a wheel) and vlmloom.packing renders GLM-4.1V's video tokens."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False, "PyAV (av) is not importable: carry its wheel (bench/gpu_suite.sh --fetch-wheels)"
    try:
        from vlmloom.packing.video import build_video_sample  # noqa: F401
    except ImportError as exc:
        return False, f"no video support in vlmloom.packing: {exc}"
    return True, "PyAV + vlmloom.packing.video"


def encode_clip(frames: int, width: int, height: int, fps: int, seed: int) -> bytes:
    """An h264 mp4 (PyAV) of a bright square moving over a gradient: content only decode cost depends on."""
    import io

    import av

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    background = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    side = max(4, min(width, height) // 4)
    x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = background.copy()
            left = (x + 3 * i) % (width - side)
            pixels[y:y + side, left:left + side] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def video_tokenizer(work_dir: str):
    """GLM-4.1V's special tokens on a small BPE (the packing builder renders video with them): (tokenizer, dir)."""
    from vlmloom.packing.tokenizer import train_tokenizer

    words = "a clip of a white square moving left to right over a grey gradient in frame second".split()
    texts = [" ".join(words[i:] + words[:i]) + " 0 1 2 3 4 5 6 7 8 9 . :" for i in range(len(words))]
    directory = os.path.join(work_dir, "tokenizer")
    return train_tokenizer(texts, directory, vocab_size=400), directory


def video_rows(tokenizer, n: int, seq_len: int, seed: int) -> tuple[list[dict], list[int]]:
    """Captioned clips rendered by the packing builder (frames sampled at GLM-4.1V's 2 fps, one timestamp and
    one block of image tokens per frame pair) and packed into rows of `seq_len`: (rows, sample lengths).
    GPU sizes: 4-12 s clips of 448x448 at 10 fps (~1k-3k tokens); tiny: 2-3 s of 56x56 at 4 fps."""
    from vlmloom.curation.video import validate_video_sample, video_sample_from_bytes
    from vlmloom.packing.builder import SequenceBuilder
    from vlmloom.packing.packers import plan_bins
    from vlmloom.packing.shards import assemble

    rng = np.random.default_rng(seed)
    builder = SequenceBuilder(tokenizer)
    large = seq_len >= 4096
    built = []
    for i in range(n):
        seconds = float(rng.uniform(4, 12) if large else rng.uniform(2, 3))
        fps, side = (10, 448) if large else (4, 56)
        sample = video_sample_from_bytes("bench", f"v{i}", encode_clip(int(seconds * fps), side, side, fps, seed + i),
                                         uri=f"v{i}.mp4", text="a clip of a white square moving left to right")
        reason, detail, _ = validate_video_sample(sample)
        if reason is not None:
            raise ValueError(f"clip v{i} rejected: {reason} {detail}")
        result = builder.build(sample)
        if not hasattr(result, "input_ids"):
            raise ValueError(f"clip v{i} not rendered: {result}")
        if len(result) <= seq_len:
            built.append(result)
    rows = []
    for b, members in enumerate(plan_bins([len(x) for x in built], seq_len, window=0)):
        row = assemble([built[m] for m in members], seq_len, builder.pad_id)
        row["key"] = f"video{b}"
        rows.append(row)
    return rows, [len(x) for x in built]


def write_json(path: str | None, data: dict) -> None:
    """Rewritten after every measured row, so a run stopped by its time budget keeps what it measured."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def print_row(row: dict) -> None:
    name = f"{row['attention']:<18} {row['layout']:<7}"
    if "error" in row:
        print(f"{name} {row['error']}", flush=True)
        return
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
    print(f"{name} {row['tokens_per_s']:>10.0f} {row['step_s']:>8.3f} {row['tflops']:>8.3f} {mfu:>6} "
          f"{row['padding_fraction']:>5.2f} {row['peak_mem_gib']:>8.2f}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=0, help="row length L (default: 8192 GPU, 512 CPU)")
    parser.add_argument("--samples", type=int, default=0, help="samples in the mix (default: 96 GPU, 48 CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--impl", action="append", help="attention implementation(s); default: all available")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="device peak for MFU (default: the datasheet table; CPU has none, so no MFU)")
    parser.add_argument("--video", action="store_true", help="packed video batches instead of the image/text mix")
    parser.add_argument("--json", help="also write the results here (rewritten after every row)")
    args = parser.parse_args(argv)

    if args.video:
        supported, reason = video_support()
        if not supported:
            print(f"# video: skipped ({reason})", flush=True)
            write_json(args.json, {"status": "skipped", "reason": reason, "results": []})
            return 0

    device, _, _ = init_distributed()
    cuda = device.type == "cuda"
    seq_len = args.seq_len or (8192 if cuda else 512)
    n_samples = args.samples or (96 if cuda else 48)
    precision = "bf16" if cuda else "fp32"
    spec = GPU_MODEL if cuda else CPU_MODEL
    tokenizer = None
    if args.video:  # the same model, with the special-token ids of the tokenizer the builder renders video with
        import tempfile

        from vlmloom.trainer.model import special_token_ids

        tokenizer, tokenizer_dir = video_tokenizer(tempfile.mkdtemp(prefix="video_bench_"))
        spec = {**spec, **special_token_ids(tokenizer_dir, spec["vocab_size"])}
    impls = args.impl or available_impls(device)
    register_varlen_attention()

    t0 = time.perf_counter()
    model = load_model(spec, attn_implementation=impls[0], seed=0)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = sum(p.numel() for p in model.parameters())
    config = build_config(TrainConfig, {"model": spec, "zero_stage": args.zero_stage, "lr": 1e-5,
                                        "grad_clip": 1.0})
    engine, _ = build_engine(CausalLMLoss(model), config, deepspeed_config(config, 1, precision))
    engine.train()
    build_s = time.perf_counter() - t0

    # the same samples, packed and padded; collated (images decoded and processed) before timing
    collator = PackedCollator(model.config)
    t0 = time.perf_counter()
    if args.video:
        rows, sample_lengths = video_rows(tokenizer, n_samples, seq_len, seed=0)
        packed = [collator([r]) for r in rows]
        layouts = [("packed", packed)]
        lengths = np.array(sample_lengths)
    else:
        rng = np.random.default_rng(0)
        samples = [synthetic.make_sample(model.config, rng, text_tokens=t, image_sizes=im, prompt_tokens=0,
                                         key=f"s{i}", processor=collator.image_processor)
                   for i, (t, im) in enumerate(length_mix(n_samples, seq_len, seed=0))]
        samples = [s for s in samples if len(s["input_ids"]) <= seq_len]
        packed = [collator([r]) for r in first_fit_decreasing(samples, seq_len)]
        layouts = [("packed", packed), ("padded", [collator([synthetic.pad_sample(s, seq_len)]) for s in samples])]
        lengths = np.array([len(s["input_ids"]) for s in samples])
    prepare_s = time.perf_counter() - t0
    print(f"# {len(lengths)} {'clips' if args.video else 'samples'}, tokens/sample mean {lengths.mean():.0f} "
          f"median {np.median(lengths):.0f} max {lengths.max()}; {len(packed)} packed rows"
          f"{'' if args.video else f' vs {len(lengths)} padded rows'} of L={seq_len} "
          f"(model + engine {build_s:.1f} s, samples prepared in {prepare_s:.1f} s)", flush=True)

    peak = peak_tflops(device, precision, args.peak_tflops)
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"# device {device_name}, {precision}, ZeRO-{args.zero_stage}, model {params / 1e9:.2f}B params, "
          f"peak {peak} TFLOP/s, gradient checkpointing {args.gradient_checkpointing}", flush=True)
    report = {
        "status": "ok", "device": device_name, "seq_len": seq_len, "params": params, "precision": precision,
        "zero_stage": args.zero_stage, "gradient_checkpointing": args.gradient_checkpointing,
        "video": args.video, "samples": len(lengths), "packed_rows": len(packed),
        "tokens_per_sample": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                              "max": int(lengths.max())},
        "peak_tflops": peak, "peak_tflops_given": args.peak_tflops > 0, "mfu_formula": MFU_FORMULA,
        "peak_memory": "CUDA max_memory_allocated" if cuda else "process peak RSS",
        "model_build_s": build_s, "prepare_s": prepare_s, "impls": impls, "results": [], "packed_over_padded": {},
    }
    write_json(args.json, report)
    print(f"{'attention':<18} {'layout':<7} {'tokens/s':>10} {'step s':>8} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'pad':>5} {'mem GiB':>8}")
    checkpointing = args.gradient_checkpointing
    for impl in impls:
        vision_impl = "flash_attention_2" if impl == "flash_attention_2" else "sdpa"
        model.set_attn_implementation({"text_config": impl, "vision_config": vision_impl, "": impl})
        for layout, batches in layouts:
            row = measure_or_error(engine, model, batches, device, args.warmup, peak)
            if row.get("out_of_memory") and not checkpointing:
                # an OOM without recomputation: the same rows again with gradient checkpointing (and every row
                # after them), so the run still gives figures; each row says which way it ran
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                checkpointing = True
                print(f"{impl:<18} {layout:<7} {row['error']}; again with gradient checkpointing", flush=True)
                row = measure_or_error(engine, model, batches, device, args.warmup, peak)
            row.update(attention=impl, layout=layout, gradient_checkpointing=checkpointing)
            report["results"].append(row)
            print_row(row)
            by = {r["layout"]: r for r in report["results"] if r["attention"] == impl and "error" not in r}
            if len(by) == 2 and by["packed"]["gradient_checkpointing"] == by["padded"]["gradient_checkpointing"]:
                ratio = by["packed"]["tokens_per_s"] / by["padded"]["tokens_per_s"]
                report["packed_over_padded"][impl] = ratio
                print(f"# {impl}: packed / padded tokens/s = {ratio:.2f}x", flush=True)
            write_json(args.json, report)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
