"""The run directory's record files: safetensors with one header key, byte-reproducible."""

import json

import pytest
import torch
from safetensors.torch import save

from probes.store import FORMAT, BatchInvalid, _flatten, _tensor_digest, read_record, write_record

RECORD = {"log_probs": torch.arange(6.0).reshape(2, 3), "meta": {"n": 2, "name": "x"}, "bounds": None}


def test_identical_records_are_identical_bytes(tmp_path):
    """safetensors writes a metadata mapping in no fixed order; the header is one sorted key, so
    writing the same record twice (as a resumed run does) gives the same bytes."""
    header = {"fingerprint": "abc", "batch": "3", "n": "2", "kind": "batch"}
    blobs = set()
    for i in range(6):
        path = write_record(tmp_path / f"r{i}.safetensors", RECORD, header)
        blobs.add(path.read_bytes())
    assert len(blobs) == 1
    record, meta = read_record(tmp_path / "r0.safetensors")
    assert torch.equal(record["log_probs"], RECORD["log_probs"]) and record["meta"] == RECORD["meta"]
    assert meta["fingerprint"] == "abc" and meta["format"] == FORMAT


def test_records_written_with_one_key_per_field_still_read(tmp_path):
    tensors, values = _flatten(RECORD)
    meta = {"format": FORMAT, "version": "2", "fingerprint": "abc", "values": json.dumps(values),
            "sha256": _tensor_digest(tensors)}
    path = tmp_path / "old.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    record, header = read_record(path)
    assert torch.equal(record["log_probs"], RECORD["log_probs"]) and header["fingerprint"] == "abc"


def test_a_header_that_is_not_a_mapping_is_unreadable(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(save({"x": torch.zeros(1)}, metadata={"probes": "[1, 2]"}))
    with pytest.raises(BatchInvalid, match="unreadable"):
        read_record(path)
