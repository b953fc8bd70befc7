"""pointcloud models, data adapters and evaluators: SVL's spiking E-3DSNN backbones on hand-written sparse convs."""

from .e3dsnn import E3DSNN, build_e3dsnn, fold_text_head, voxelize
from .sparse import SparseConv3d, SparseTensor, SubMConv3d

from . import models  # noqa: E402,F401  (registers svl-e3dsnn-{t,s,l,h}-openshape)

__all__ = ["E3DSNN", "build_e3dsnn", "fold_text_head", "voxelize", "SparseTensor", "SubMConv3d", "SparseConv3d"]
