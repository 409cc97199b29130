"""Import-time fixes for known breakages of third-party packages.

torchvision wheels built for CUDA fail to load their compiled ops on a CPU-only torch; torchvision
then dies at import with ``operator torchvision::nms does not exist``, which also breaks every
package that imports it (open_clip, timm, transformers, diffusers). Declaring the two op schemas
that torchvision registers at import lets it load; its Python-level ops stay usable and only the
compiled kernels (nms, roi_align, ...) are missing, which this toolkit never calls.
Where torchvision's compiled ops load, this does nothing.
"""

from __future__ import annotations

import importlib.util

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
        from pathlib import Path

        lib = next(Path(spec.origin).parent.glob("_C*.so"), None)
        if lib is not None:
            torch.ops.load_library(str(lib))
            return
    except (OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")  # noqa: F841 - kept alive below
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _keep_alive.append(library)


_keep_alive: list = []
