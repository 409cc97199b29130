"""Where weights come from and where probes caches: the Hugging Face hub's offline switch, the
download command to suggest, and probes' own cache folder."""

from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from pathlib import Path


def hub_offline(local_files_only: bool | None = None) -> bool:
    """``local_files_only`` if given, else the ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` flags."""
    if local_files_only is not None:
        return bool(local_files_only)
    flag = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def download_command(repo_id: str, local_dir: str | None = None) -> str:
    """The shell command that fetches a hub repository (``hf``, the CLI huggingface_hub ships;
    its older ``huggingface-cli`` is gone from current releases)."""
    return f"hf download {repo_id}" + (f" --local-dir {local_dir}" if local_dir else "")


def cache_dir() -> Path:
    """probes' cache folder: ``$PROBES_CACHE``, else ``$XDG_CACHE_HOME/probes``, else ``~/.cache/probes``."""
    root = os.environ.get("PROBES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "probes")
    return Path(root)


@contextmanager
def quiet_loading_bars():
    """Silence diffusers', transformers' and huggingface_hub's own progress bars ("Loading
    pipeline components", "Loading weights", downloads) while loading; the run shows its own."""
    restore = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):  # the same switch in both
        try:
            library_logging = importlib.import_module(name)
        except ImportError:
            continue
        if library_logging.is_progress_bar_enabled():
            library_logging.disable_progress_bar()
            restore.append(library_logging.enable_progress_bar)
    try:
        import huggingface_hub.utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    except ImportError:
        pass
    try:
        yield
    finally:
        for enable in restore:
            enable()
