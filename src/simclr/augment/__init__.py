"""SimCLR data augmentation (Chen et al. 2020, appendix A; arXiv 2002.05709).

:class:`SimCLRViews` makes two random views of a batch on its device; :class:`TwoCrops` cuts
the two crops of photographs of varying size in loader workers; :func:`eval_resize` is the
evaluation preprocessing; :func:`reference_transform` is the per-image torchvision pipeline.
"""

from simclr.augment.loader import TwoCrops, eval_resize
from simclr.augment.params import ViewParams, sample_view_params
from simclr.augment.reference import reference_transform
from simclr.augment.views import SimCLRViews

__all__ = [
    "SimCLRViews",
    "TwoCrops",
    "ViewParams",
    "eval_resize",
    "reference_transform",
    "sample_view_params",
]
