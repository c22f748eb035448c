"""The data layer: IDX files, dataset registry, resolver, cache, splits, batches, augmentation."""

from digitlab.data.augment import AugmentConfig, BatchAugmenter, augment_batch
from digitlab.data.batches import BatchIterator, iterate_eval, to_float
from digitlab.data.dataset import Dataset, class_counts, load_dataset
from digitlab.data.idx import read_idx, write_idx
from digitlab.data.registry import DATASETS, get_dataset_spec
from digitlab.data.splits import DataSplits, Split, make_splits, stratified_indices

__all__ = [
    "DATASETS", "AugmentConfig", "BatchAugmenter", "BatchIterator", "DataSplits", "Dataset",
    "Split", "augment_batch", "class_counts", "get_dataset_spec", "iterate_eval", "load_dataset",
    "make_splits", "read_idx", "stratified_indices", "to_float", "write_idx",
]
