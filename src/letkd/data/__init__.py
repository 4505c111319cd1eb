"""Datasets and their standard transforms.

``create_dataset(name, split)`` returns a torch ``Dataset`` of ``(image float32 (3, H, W), label int)`` with a
``.targets`` list; ``dataset_info(name)`` gives classes, image size and normalisation statistics without
reading data. Names: ``cifar10``, ``cifar100``, ``digits``, ``fashion_mnist``, ``imagenet``,
``tiny_imagenet``. Data folders are searched in ``root``, ``$LETKD_DATA``, ``./data`` (see docs/data.md).
"""

from letkd.data.errors import DatasetFormatError, DatasetNotFoundError
from letkd.data.registry import DatasetInfo, create_dataset, dataset_info, get_transform, list_datasets
from letkd.data.subset import LabeledSubset, subset

__all__ = [
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "LabeledSubset",
    "create_dataset",
    "dataset_info",
    "get_transform",
    "list_datasets",
    "subset",
]
