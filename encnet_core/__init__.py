"""encnet core library: EncNet models, datasets, training and inference (no CLI dependencies).

``from encnet_core import Segmenter`` is the Python API (encnet_core/segmenter.py, docs/python.md);
it is imported on first use, so ``import encnet_core`` stays free of torch.
"""

from typing import TYPE_CHECKING, Any

from encnet_core.version import __version__

__all__ = ["Segmenter", "Segmentation", "__version__"]

if TYPE_CHECKING:
    from encnet_core.segmenter import Segmentation, Segmenter


def __getattr__(name: str) -> Any:
    if name in ("Segmenter", "Segmentation"):
        from encnet_core import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'encnet_core' has no attribute {name!r}")
