"""Data: cases and datasets, readers for each layout, prediction files, attributes, budgets."""

from fewsam.data.attributes import (AttributeTable, Bins, group_of, parse_bins,
                                    read_attribute_table)
from fewsam.data.budget import select_labelled, select_unlabelled, unlabelled_pool
from fewsam.data.open import LAYOUTS, load_labelled_case, open_dataset
from fewsam.data.types import Case, ClassMap, Dataset, SliceRef
from fewsam.data.writers import prediction_path, read_prediction, write_prediction

__all__ = [
    "LAYOUTS", "AttributeTable", "Bins", "Case", "ClassMap", "Dataset", "SliceRef", "group_of",
    "load_labelled_case", "open_dataset", "parse_bins", "prediction_path", "read_attribute_table", "read_prediction",
    "select_labelled", "select_unlabelled", "unlabelled_pool", "write_prediction",
]
