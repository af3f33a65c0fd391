"""Reads an offline W&B run's `.wandb` file: what a dashboard would show once the run is synced.

wandb (0.31) has no Python reader of its own any more (its Go core writes the file): the records are
wandb's own protobufs (`wandb.proto.wandb_internal_pb2.Record`) in LevelDB's log framing (32 KiB blocks;
a 7-byte header per chunk: CRC-32, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte `:W&B` header.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of the file, parsed; a chunk whose CRC-32 does not match fails the read."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is no W&B run file"
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left  # a block's tail too short for a header is padding
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"corrupt chunk at byte {pos} of {path}"
        pos += 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(path: Path) -> dict[str, Any]:
    """The run as a dashboard shows it: name, group, tags, config, history rows, summary, exit code."""
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exit_code": None}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.update(name=r.run.display_name, group=r.run.run_group, tags=list(r.run.tags), id=r.run.run_id)
            run["config"].update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            run["config"].update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            run["summary"].update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "exit":
            run["exit_code"] = r.exit.exit_code
    return run
