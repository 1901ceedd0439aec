"""`vlmloom inspect DIR`: the report summary of a curated output, its manifest/ and rejected/ parts (row counts
from the Parquet footers, no data read), plus a few samples from its first shards."""
from __future__ import annotations

import glob
import json
import os
import tarfile

import pyarrow.parquet as pq

from vlmloom.schemas import formats


def inspect_output(directory: str, num_samples: int = 5) -> str:
    from vlmloom.pipelines.report import summary_table

    lines = []
    report_path = os.path.join(directory, formats.REPORT_FILE)
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as fh:
            lines.append(summary_table(json.load(fh)))
    pack_report = os.path.join(directory, "pack_report.json")
    if os.path.exists(pack_report):
        with open(pack_report, encoding="utf-8") as fh:
            lines.append(json.dumps(json.load(fh), indent=1)[:3000])
    for sub in (formats.MANIFEST_DIR, formats.REJECTED_DIR):
        parts = sorted(glob.glob(os.path.join(directory, sub, "*.parquet")))
        if parts:
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
            lines.append(f"{sub}/: {rows} rows in {len(parts)} parts")
    shards = sorted(f for f in os.listdir(os.path.join(directory, formats.SHARDS_DIR)) if f.endswith(".tar"))
    shown = 0
    for shard in shards:  # shards are cut inside buckets and may be small: read on until enough are shown
        if shown >= num_samples:
            break
        with tarfile.open(os.path.join(directory, formats.SHARDS_DIR, shard)) as tar:
            for member in tar:
                if member.name.endswith(".json") and member.name.count(".") == 1 and shown < num_samples:
                    record = json.loads(tar.extractfile(member).read())
                    text = (record.get("text") or "").replace("\n", " ")[:100]
                    lines.append(f"{record['key']}  kind={record['kind']}  source_id={record['source_id']}  "
                                 f"images={len(record['images'])}  text={text!r}")
                    lines.append(f"    signals={record['signals'][:200]}")
                    shown += 1
    return "\n".join(lines)
