"""Datasets and their standard transforms.

``create_dataset(name, split)`` returns a torch ``Dataset`` of ``(image float32 (3, H, W), label int)`` with a
``.targets`` list; ``dataset_info(name)`` gives classes, image size and normalisation statistics without
reading data. Names: ``cifar10``, ``cifar100``, ``digits``, ``fashion_mnist``, ``imagenet``,
``tiny_imagenet``, and any registered with :func:`register_dataset`. Data folders are searched in ``root``,
``$LETKD_DATA``, ``./data`` (see docs/data.md).
"""

from letkd.data.errors import DatasetFormatError, DatasetNotFoundError
from letkd.data.memory import InMemoryImageDataset
from letkd.data.registry import (
    DatasetInfo,
    UnknownDatasetError,
    create_dataset,
    dataset_info,
    get_transform,
    list_datasets,
    register_dataset,
)
from letkd.data.subset import LabeledSubset, subset

__all__ = [
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "InMemoryImageDataset",
    "LabeledSubset",
    "UnknownDatasetError",
    "create_dataset",
    "dataset_info",
    "get_transform",
    "list_datasets",
    "register_dataset",
    "subset",
]
