"""The run directory as a small versioned format: marker, fingerprint, batch files.

* ``.probes-run`` marks a directory as a probes run (JSON: format name and version, the
  fingerprint of what produced it). ``--overwrite`` only ever deletes directories that carry it
  and hold nothing but files probes writes; ``--resume`` only continues one whose fingerprint
  matches.
* The **fingerprint** covers everything that changes the numbers: the resolved recipe (except
  the sample count and the analysis options), the taxonomy's content (not its path), the contents
  or signatures of the model files the recipe names, the seed and the batch size. The sample count
  may change between sessions: batch ``b`` always holds samples ``[b * batch_size, ...)`` drawn from
  a seed of its own, so a batch is reusable exactly when its own header says it has the size the
  new count needs.
* **Batch files** are safetensors (no pickle: a crafted file cannot run code) with a JSON header
  naming the run fingerprint, the batch index, the sample count and a SHA-256 of the tensors. A
  batch that is unreadable, corrupt, from another run or of the wrong size or shape stops
  ``--resume`` with one line naming it (``--recompute-damaged`` sets it aside and recomputes it);
  nothing else is ever trusted.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probes.fileio import atomic_write_bytes, atomic_write_text
from probes.taxonomy import to_node_link

FORMAT = "probes-run"
FORMAT_VERSION = 2
METADATA_KEY = "probes"  # the safetensors metadata key of a record's header
MARKER = ".probes-run"
BATCH_DIR = "batches"
BATCH_SUFFIX = ".safetensors"
# Everything probes writes into a run directory; anything else makes --overwrite refuse.
OUTPUT_PATTERNS = (MARKER, "run.json", "curves.csv", "decisions.csv", "commitments.csv", "tree.json", "tree.graphml",
                   "tree.nwk", "*.png", "*.pdf", "*.svg", "report.html", "samples.csv", "previews", "strips",
                   "compare.csv", "posteriors.safetensors", "evidence.safetensors", "taxonomy.json", "summary.txt",
                   ".*.tmp", BATCH_DIR)
BATCH_PATTERNS = ("batch_*" + BATCH_SUFFIX, "batch_*.pt", ".*.tmp")
# Model files above this size are fingerprinted by size and modification time, not content.
HASH_LIMIT = 64 << 20


def batch_path(out: Path, b: int) -> Path:
    return Path(out) / BATCH_DIR / f"batch_{b:05d}{BATCH_SUFFIX}"


def finished_batch_count(out: Path) -> int:
    """How many batch files a run directory holds (finished batches, not yet checked)."""
    return len(list((Path(out) / BATCH_DIR).glob("batch_*" + BATCH_SUFFIX)))


# --- fingerprints -----------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path_signature(path: str | Path) -> Any:
    """Contents of small files, size and mtime of big ones; directories file by file (bounded)."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        if st.st_size <= HASH_LIMIT:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()[:16]
        return [st.st_size, st.st_mtime_ns]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())[:2000]
        return {str(p.relative_to(path)): path_signature(p) for p in files}
    return None  # a hub id or a missing path: the recipe's text is all there is


def fingerprint_parts(recipe, taxonomy, model_paths: list[str], device_type: str = "cpu") -> dict[str, str]:
    """Named hashes of what changes the numbers (see the module docstring).

    The device enters by type only (``cuda``, not ``cuda:3``), so ranks on different GPUs agree.
    """
    data = recipe.model_dump(mode="json")
    data["sampling"].pop("samples", None)
    for key in ("analysis", "name", "device", "quality"):  # quality is scored after sampling
        data.pop(key, None)
    if recipe.analysis.evidence_maps:  # the maps are made while filtering: batches hold them
        data["evidence_maps"] = True
    seed = data.pop("seed", None)
    return {
        "format": str(FORMAT_VERSION),
        "device": device_type,
        "recipe": _digest(data),
        "seed": str(seed),
        "batch_size": str(recipe.sampling.batch_size),
        "taxonomy": _digest(to_node_link(taxonomy)),
        "model_files": _digest({p: path_signature(p) for p in model_paths}),
    }


def combined(parts: dict[str, str]) -> str:
    return _digest(parts)


# --- the marker -------------------------------------------------------------------------------


def read_marker(out: Path) -> dict | None:
    """The marker's content, ``None`` if absent; a marker that cannot be parsed is ``{}``."""
    path = Path(out) / MARKER
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("fingerprint"), str):
        return {}
    # Fields of the wrong type (an edited marker) are dropped: the fingerprint alone decides.
    if not isinstance(data.get("fingerprint_parts"), dict):
        data.pop("fingerprint_parts", None)
    if isinstance(data.get("processes"), bool) or not isinstance(data.get("processes"), int) or data["processes"] < 1:
        data.pop("processes", None)
    if not isinstance(data.get("created"), str):
        data.pop("created", None)
    return data


def write_marker(out: Path, parts: dict[str, str], extra: dict | None = None) -> None:
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": combined(parts),
               "fingerprint_parts": parts, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
    atomic_write_text(Path(out) / MARKER, json.dumps(payload, indent=2) + "\n")


def foreign_entries(out: Path) -> list[str]:
    """Entries of ``out`` (and of its batches folder) that probes does not write."""
    out = Path(out)
    foreign = [p.name for p in out.iterdir() if not any(fnmatch.fnmatch(p.name, pat) for pat in OUTPUT_PATTERNS)]
    batches = out / BATCH_DIR
    if batches.is_symlink() or (batches.exists() and not batches.is_dir()):
        foreign.append(BATCH_DIR)
    elif batches.is_dir():
        foreign += [f"{BATCH_DIR}/{p.name}" for p in batches.iterdir()
                    if not any(fnmatch.fnmatch(p.name, pat) for pat in BATCH_PATTERNS) or not p.is_file()]
    return sorted(foreign)


def run_json_if_readable(out: Path) -> dict:
    """A directory's run.json as a dict; ``{}`` when it is missing, unreadable or not an object."""
    try:
        state = json.loads((Path(out) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def is_legacy_run(out: Path) -> bool:
    """A run directory written before the marker existed (run.json with a fingerprint)."""
    state = run_json_if_readable(out)
    return "fingerprint" in state and "status" in state


def remove_run(out: Path) -> None:
    """Delete a run directory's files (the caller checked it is ours and holds nothing else)."""
    out = Path(out)
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# --- batch files ------------------------------------------------------------------------------


class BatchInvalid(Exception):
    """A batch file that cannot be used; the message says why."""


class BatchStale(BatchInvalid):
    """A sound batch file of another size: the run's sample count changed since it was written."""


@dataclass
class BatchHeader:
    """What a batch file must say about itself to be used (``n=None``: any sample count)."""

    fingerprint: str
    batch: int
    n: int | None = None


def _flatten(record: dict, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, values = {}, {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if "/" in str(key):
            raise ValueError(f"batch record key {key!r} holds '/'")
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):
            t, v = _flatten(value, name + "/")
            tensors.update(t)
            values.update(v)
            values.setdefault(name + "/", {})  # keeps empty mappings
        else:
            values[name] = value  # JSON: None, numbers, strings, lists of them
    return tensors, values


def _unflatten(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> dict:
    record: dict = {}
    for name, value in list(values.items()) + list(tensors.items()):
        *parents, leaf = name.split("/")
        node = record
        for part in parents:
            node = node.setdefault(part, {})
        if leaf:  # "a/" entries only create the mapping
            node[leaf] = value
    return record


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_record(path: Path, record: dict, header: dict[str, str]) -> Path:
    """A nested mapping of tensors and JSON values as one safetensors file, atomically, with a
    SHA-256 of the tensors in its header (``header`` adds string fields)."""
    tensors, values = _flatten(record)
    return write_tensors(path, tensors, {**header, "values": json.dumps(values)})


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> Path:
    """Flat named tensors (any names) as one safetensors file, atomically, with the probes format,
    ``header``'s string fields and a SHA-256 of the tensors in its header."""
    from safetensors.torch import save

    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION), **header, "sha256": _tensor_digest(tensors)}
    # One metadata key holding sorted JSON: safetensors writes several keys in no fixed order, and
    # identical runs must give identical bytes.
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)}))
    return Path(path)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, header)`` from :func:`write_tensors`'s file, or :class:`BatchInvalid` saying why
    not. Nothing in the file is executed: safetensors holds tensors and a JSON header only."""
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        if METADATA_KEY in meta:  # files written before the header was one key carry the fields as keys
            meta = json.loads(meta[METADATA_KEY])
        if not isinstance(meta, dict):
            raise ValueError("header is not a mapping")
    except Exception as exc:  # any parse failure means the file is not a readable record
        raise BatchInvalid(f"unreadable ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise BatchInvalid("not a probes file")
    if meta.get("sha256") != _tensor_digest(tensors):
        raise BatchInvalid("checksum mismatch (the file was changed or damaged)")
    return tensors, meta


def read_record(path: Path) -> tuple[dict, dict]:
    """``(record, header)`` from :func:`write_record`'s file, or :class:`BatchInvalid` saying why not."""
    tensors, meta = read_tensors(path)
    try:
        values = json.loads(meta.get("values", "{}"))
    except ValueError:
        raise BatchInvalid("corrupt header") from None
    return _unflatten(tensors, values), meta


def save_batch(out: Path, record: dict, header: BatchHeader) -> Path:
    """Write one finished batch atomically."""
    return write_record(batch_path(out, header.batch), record,
                        {"fingerprint": header.fingerprint, "batch": str(header.batch), "n": str(header.n)})


def load_batch(path: Path, expected: BatchHeader) -> dict:
    """A batch record, or :class:`BatchInvalid` saying why it cannot be used."""
    record, meta = read_record(path)
    if meta.get("fingerprint") != expected.fingerprint:
        raise BatchInvalid("written by a different recipe, seed or input files")
    if meta.get("batch") != str(expected.batch):
        raise BatchInvalid(f"holds batch {meta.get('batch')}, not {expected.batch}")
    if expected.n is not None and meta.get("n") != str(expected.n):
        raise BatchStale(f"holds {meta.get('n')} samples where this run needs {expected.n}")
    return record


def check_batches(out: Path, expected: list[BatchHeader],
                  validate=None) -> tuple[list[int], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """``(batches to compute, damaged files with why, stale files with why)``: a batch is to compute
    when its file is missing, damaged (unreadable, changed, from another run, or refused by
    ``validate(record, header)``, which returns a reason or None) or stale (of another size: the
    sample count changed). Nothing is moved or deleted."""
    todo, damaged, stale = [], [], []
    for header in expected:
        path = batch_path(out, header.batch)
        if not path.exists():
            todo.append(header.batch)
            continue
        try:
            record = load_batch(path, header)
            why = validate(record, header) if validate is not None else None
            if why:
                raise BatchInvalid(why)
        except BatchStale as why:
            stale.append((path, str(why)))
            todo.append(header.batch)
        except BatchInvalid as why:
            damaged.append((path, str(why)))
            todo.append(header.batch)
    return todo, damaged, stale


def set_aside(path: Path) -> Path:
    """Move a damaged batch file out of the way (kept beside the others, never deleted)."""
    target = path.with_name(f".{path.name}.invalid.tmp")
    os.replace(path, target)
    return target
