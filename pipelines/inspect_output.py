"""`vlmloom inspect DIR`: the report summary of a curated output, its manifest/ and rejected/ parts (row counts
from the Parquet footers, no data read), plus a few samples from its first shards; of a packed output, its pack
report. Both layouts are read through their one reader (schemas/curated.py, schemas/packed.py)."""
from __future__ import annotations

import json

from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.schemas import curated, packed


def inspect_output(directory: str, num_samples: int = 5) -> str:
    from vlmloom.pipelines.report import summary_table

    lines = []
    report = curated.read_report(directory, BEAM_FILES)
    if report is not None:
        lines.append(summary_table(report))
    pack_report = packed.read_report(directory, BEAM_FILES)
    if pack_report is not None:
        lines.append(json.dumps(pack_report, indent=1)[:3000])
    for table in (curated.MANIFEST, curated.REJECTED):
        rows, parts = curated.part_row_counts(directory, table, BEAM_FILES)
        if parts:
            lines.append(f"{table}/: {rows} rows in {parts} parts")
    shown = 0
    shards = curated.shard_paths(directory, BEAM_FILES) if pack_report is None else []  # packed entries: no samples
    for shard in shards:  # shards are cut inside buckets and may be small: read on until enough are shown
        if shown >= num_samples:
            break
        with BEAM_FILES.open(shard) as fh:
            for sample in curated.iter_shard_samples(fh):
                if shown >= num_samples:
                    break
                text = (sample.text or "").replace("\n", " ")[:100]
                signals = json.dumps(sample.signals, sort_keys=True, default=str)
                lines.append(f"{sample.key}  kind={sample.kind}  source_id={sample.source_id}  "
                             f"images={len(sample.images)}  text={text!r}")
                lines.append(f"    signals={signals[:200]}")
                shown += 1
    return "\n".join(lines)
