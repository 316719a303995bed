"""A labelled image data set held in memory, as every Source returns it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels of one split of one (or several) sources.

    ``images`` are ``uint8`` of shape ``(N, 1, 28, 28)`` (0 = background);
    ``labels`` are ``int64`` of shape ``(N,)``; ``domains`` (``int64``, ``(N,)``)
    says which source each row came from when several are concatenated.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    domains: torch.Tensor | None = None
    domain_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"{self.name}: images must be uint8 (N, C, H, W), got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.name}: {self.images.shape[0]} images but labels of shape "
                f"{tuple(self.labels.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def float_images(self) -> torch.Tensor:
        """Images as ``float32`` in [0, 1], shape ``(N, 1, 28, 28)``."""
        return self.images.float().div_(255.0)

    def subset(self, index: torch.Tensor) -> ImageDataset:
        """The rows at ``index`` (a 1-D ``int64`` tensor), same class and domain names."""
        return ImageDataset(
            name=self.name,
            images=self.images[index],
            labels=self.labels[index],
            class_names=self.class_names,
            domains=None if self.domains is None else self.domains[index],
            domain_names=self.domain_names,
        )
