"""Video throughput: our decode + GLM-4.1V frame sampling against a bare PyAV decode loop over the same files, in one
process and in two (multiprocessing.Pool), and the pack step's throughput on video samples next to image-only ones.

    .venv/bin/python bench/video_throughput.py                                   # 16 videos of 4 s, 256×256 (CPU)
    .venv/bin/python bench/video_throughput.py --videos 8 --seconds 2 --size 192 --pack-samples 200

Videos are the demo corpus' (demo/media.py `moving_shape_video`: one shape crossing a light background, PyAV
libx264 in mp4, yuv420p, preset ultrafast), square, frame rates cycling through --fps. Per row, frames/s counts
the frames the files hold (the same count for every row, whatever it decodes), so rows compare directly; `ratio` is
the row's frames/s over the bare loop's with the same number of processes; sampled/s counts the frames GLM-4.1V sees.

    bare PyAV loop     av.open → decode every frame of stream 0 (no conversion): the floor any reader pays
    probe              curation/video.py `probe_video`: container checks, every frame counted, motion measured on
                       16×16 grey thumbnails of the frames GLM's sampling rate sees (the curate decode stage)
    sample + pixels    packing/video.py: plan (schemas/video.py frame indices, smart resize) and
                       `video_pixel_values` (decode to the last sampled frame, resize, normalise, patchify: what the
                       trainer's collator does per video)
    probe + sample     both, as a video goes through curate and then training

Pack: `vlmloom pack` (packing/pack.py, one process) over a curated directory of N caption samples with one image
each, and over one of N probed video samples (the same captions); a tokenizer trained once beforehand is given to
both runs, so the time is pass 1, the mixture plan, pass 2 and the writes (a first untimed round warms up; the
best of --repeats is shown). Machine load is printed (os.getloadavg).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time



def make_video(path: str, seconds: float, fps: int, size: int, index: int) -> int:
    """demo/media.py's moving shape (libx264 mp4) written to `path`; returns the frames written."""
    from vlmloom.demo.media import COLOURS, DIRECTIONS, SHAPES, moving_shape_video

    frames = max(1, int(round(seconds * fps)))
    data = moving_shape_video(SHAPES[index % len(SHAPES)], list(COLOURS)[index % len(COLOURS)],
                              list(DIRECTIONS)[index % len(DIRECTIONS)], frames, fps, size)
    with open(path, "wb") as fh:
        fh.write(data)
    return frames


# ---- one file per call (module level: multiprocessing pickles them by name) -------------------------------------
def bare_decode(path: str) -> tuple[int, int]:
    import av

    n = 0
    with av.open(path, "r") as container:
        for _ in container.decode(container.streams.video[0]):
            n += 1
    return n, 0


def probe(path: str) -> tuple[int, int]:
    from vlmloom.curation.video import probe_video

    with open(path, "rb") as fh:
        ref = probe_video(fh.read(), uri=path)
    return ref.frame_count, 0


def _sample_pixels(data: bytes, ref) -> int:
    from vlmloom.packing.video import plan_for, video_pixel_values

    plan = plan_for(ref)
    rows = video_pixel_values(data, list(plan.frame_indices), plan.grid_thw)
    assert rows.shape[0] == plan.grid_thw[0] * plan.grid_thw[1] * plan.grid_thw[2]
    return len(plan.frame_indices)


def sample_pixels(path: str, _refs={}) -> tuple[int, int]:
    # the probe is done (and cached per process) outside the timed region's work: this row is the trainer's part
    with open(path, "rb") as fh:
        data = fh.read()
    ref = _refs[path]
    return ref.frame_count, _sample_pixels(data, ref)


def probe_and_sample(path: str) -> tuple[int, int]:
    from vlmloom.curation.video import probe_video

    with open(path, "rb") as fh:
        data = fh.read()
    ref = probe_video(data, uri=path)
    return ref.frame_count, _sample_pixels(data, ref)


def _init_refs(paths: list[str]) -> None:
    from vlmloom.curation.video import probe_video

    for p in paths:
        with open(p, "rb") as fh:
            sample_pixels.__defaults__[0][p] = probe_video(fh.read(), uri=p)


def run_decode(paths: list[str], fn, processes: int, repeats: int) -> tuple[float, int, int]:
    """Best wall time of `repeats` runs of fn over every path; (seconds, frames in the files, frames sampled)."""
    best = float("inf")
    frames = sampled = 0
    pool = mp.get_context("fork").Pool(processes, initializer=_init_refs, initargs=(paths,)) if processes > 1 else None
    try:
        if pool:
            pool.map(fn, paths[:processes], chunksize=1)  # workers started and imports done before timing
        else:
            fn(paths[0])
        for _ in range(repeats):
            start = time.perf_counter()
            out = pool.map(fn, paths, chunksize=1) if pool else [fn(p) for p in paths]
            best = min(best, time.perf_counter() - start)
            frames, sampled = sum(o[0] for o in out), sum(o[1] for o in out)
    finally:
        if pool:
            pool.close()
            pool.join()
    return best, frames, sampled


# ---- pack ------------------------------------------------------------------------------------------------------
def pack_rows(paths: list[str], n: int, seq_len: int, workdir: str, repeats: int) -> list[tuple[str, int, int, float]]:
    from vlmloom.curation.video import validate_video_sample, video_sample_from_bytes
    from vlmloom.demo.records import synthetic_samples
    from vlmloom.packing.pack import PackConfig, pack, sample_texts
    from vlmloom.packing.tokenizer import train_tokenizer
    from vlmloom.schemas.curated import write_curated_dir

    captions = synthetic_samples(n, seed=0, source="imgs", kinds=("caption",), image_side=(64, 640))
    videos = []
    blobs = [open(p, "rb").read() for p in paths]
    for i in range(n):
        s = video_sample_from_bytes("clips", f"clip{i}", blobs[i % len(blobs)], uri=paths[i % len(paths)],
                                    text=captions[i].text)
        reason, detail, _ = validate_video_sample(s)
        assert reason is None, detail
        videos.append(s)
    dirs = {"image-only (1 image each)": write_curated_dir(os.path.join(workdir, "cur_img"), captions),
            "video (1 video each)": write_curated_dir(os.path.join(workdir, "cur_vid"), videos)}
    tok_dir = os.path.join(workdir, "tok")
    train_tokenizer((t for s in captions for t in sample_texts(s)), tok_dir, vocab_size=1024)
    rows = []
    for round_ in range(1 + repeats):  # round 0 warms up (imports, first tokenizer load), untimed
        for label, cur in dirs.items():
            out = os.path.join(workdir, "packed_" + label.split()[0])
            start = time.perf_counter()
            report = pack(PackConfig(inputs=[cur], output=out, seq_len=seq_len, tokenizer=tok_dir, overwrite=True),
                          progress=False)
            seconds = time.perf_counter() - start
            if round_:
                rows.append((label, report["samples_packed"], report["tokens"], seconds))
    best = {}
    for row in rows:
        if row[0] not in best or row[3] < best[row[0]][3]:
            best[row[0]] = row
    return list(best.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=16, help="generated videos")
    ap.add_argument("--seconds", type=float, default=4.0, help="duration of each")
    ap.add_argument("--fps", default="24,30,12", help="frame rates, cycled over the videos")
    ap.add_argument("--size", type=int, default=256, help="side of every (square) video, pixels")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per row (the best is shown)")
    ap.add_argument("--pack-samples", type=int, default=400, help="samples per pack run")
    ap.add_argument("--seq-len", type=int, default=4096, help="pack seq_len")
    args = ap.parse_args(argv)
    rates = [int(x) for x in args.fps.split(",")]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="vlmloom_video_bench_") as workdir:
        paths, total = [], 0
        for i in range(args.videos):
            paths.append(os.path.join(workdir, f"v{i:03d}.mp4"))
            total += make_video(paths[-1], args.seconds, rates[i % len(rates)], args.size, i)
        mb = sum(os.path.getsize(p) for p in paths) / 2**20
        print(f"{args.videos} videos, {args.seconds:g} s each at {args.fps} fps, {args.size}x{args.size}, libx264: "
              f"{total} frames, {mb:.2f} MiB\n")
        _init_refs(paths)
        print(f"{'decode':<18} {'procs':>5} {'seconds':>8} {'frames/s':>9} {'sampled':>8} {'sampled/s':>9} "
              f"{'ratio':>6}")
        for processes in (1, 2):
            bare = None
            for label, fn in (("bare PyAV loop", bare_decode), ("probe", probe), ("sample + pixels", sample_pixels),
                              ("probe + sample", probe_and_sample)):
                seconds, frames, sampled = run_decode(paths, fn, processes, args.repeats)
                assert frames == total, f"{label}: {frames} frames decoded, {total} written"
                rate = frames / seconds
                bare = bare or rate
                print(f"{label:<18} {processes:>5} {seconds:>8.3f} {rate:>9.0f} {sampled or '':>8} "
                      f"{(f'{sampled / seconds:.0f}' if sampled else ''):>9} {rate / bare:>6.2f}")
        print(f"\n{'pack (seq_len ' + str(args.seq_len) + ')':<28} {'samples':>7} {'tokens':>9} {'seconds':>8} "
              f"{'samples/s':>9} {'tokens/s':>9}")
        for label, samples, tokens, seconds in pack_rows(paths, args.pack_samples, args.seq_len, workdir, args.repeats):
            print(f"{label:<28} {samples:>7} {tokens:>9} {seconds:>8.2f} {samples / seconds:>9.1f} "
                  f"{tokens / seconds:>9.0f}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
