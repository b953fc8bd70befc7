"""3D point clouds: SVL's spiking E-3DSNN backbones on the zoo's own sparse convolutions, Rep-VLI zero-shot heads.

``models`` holds the cards, ``e3dsnn`` the architecture (and its converter), ``sparse`` the sparse 3D
convolutions, ``data`` OpenShape's file formats, ``classes`` the ``classes=`` option, ``train`` SVL's
alignment, ``evaluate`` zero-shot metrics and energy, ``predict`` clouds and meshes, ``synthetic`` the
demo data set, ``text`` the offline text encoder, ``cli`` the verbs.
"""

from zoo.plugin import Task, lazy_exports

TASK = Task(
    name="pointcloud",
    description="3D point clouds: open-world zero-shot classification (SVL: E-3DSNN)",
    models="tasks.pointcloud.models",
    cli="tasks.pointcloud.cli",
)

_LAZY = {"E3DSNN": "e3dsnn", "build_e3dsnn": "e3dsnn", "fold_text_head": "e3dsnn", "voxelize": "e3dsnn",
         "SparseTensor": "sparse", "SubMConv3d": "sparse", "SparseConv3d": "sparse"}
__all__ = ["TASK", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)  # the architectures import torch: only when asked for
