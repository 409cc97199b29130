"""Import-time fixes for known breakages of third-party packages.

torchvision wheels built for CUDA fail to load their compiled ops on a CPU-only torch; torchvision
then dies at import with ``operator torchvision::nms does not exist``, which also breaks every
package that imports it (open_clip, timm, transformers, diffusers). Declaring the two op schemas
that torchvision registers at import lets it load; its Python-level ops stay usable and only the
compiled kernels (nms, roi_align, ...) are missing, which this toolkit never calls.
Where torchvision's compiled ops load, this does nothing.

Inside probes the CLI and the model loaders call :func:`patch_torchvision`. For plain scripts
(``from diffusers import ...``, ``import open_clip``, ``import timm``) ``scripts/setup.sh`` puts
:data:`PTH_NAME` into the environment's site-packages: at interpreter start it installs
:func:`install_import_hook`, a finder that runs the patch the moment torchvision is first imported
(so interpreters that never import torchvision pay nothing, not even the import of torch).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_done = False


def patch_torchvision() -> None:
    """Make ``import torchvision`` work on CPU torch with a CUDA torchvision build. Idempotent."""
    global _done
    if _done:
        return
    _done = True
    if importlib.util.find_spec("torchvision") is None:
        return
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # the compiled ops are registered already
    except RuntimeError:
        pass
    spec = importlib.util.find_spec("torchvision")
    try:
        # Loading the extension registers the real schemas when it is compatible.
        lib = next(Path(spec.origin).parent.glob("_C*.so"), None)
        if lib is not None:
            torch.ops.load_library(str(lib))
            return
    except (OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _keep_alive.append(library)


_keep_alive: list = []


# --- the startup hook for plain scripts -------------------------------------------------------

PTH_NAME = "probes-torchvision-fix.pth"
# site runs .pth lines that start with "import"; a missing or broken probes must not break Python.
PTH_LINE = ('import sys; exec("try:\\n from probes._compat import install_import_hook\\n install_import_hook()\\n'
            'except Exception:\\n pass")\n')


class _PatchBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`patch_torchvision` just before torchvision's first import, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            patch_torchvision()
        return None  # the regular finders load the module


def install_import_hook() -> None:
    """Patch torchvision when (and only if) something imports it. Idempotent."""
    if "torchvision" in sys.modules or any(isinstance(f, _PatchBeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _PatchBeforeTorchvision())


def write_startup_hook(site_packages: str | Path) -> Path:
    """Write :data:`PTH_NAME` into ``site_packages`` (``scripts/setup.sh`` does this for .venv)."""
    path = Path(site_packages) / PTH_NAME
    path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":  # python -m probes._compat SITE_PACKAGES
    print(write_startup_hook(sys.argv[1]))
