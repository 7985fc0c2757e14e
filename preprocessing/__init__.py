"""Preprocessing: crop to the body, normalise intensities, resample to the plans' spacing, store.

Public API::

    preprocess_dataset(dataset, plans, out_dir, num_workers=2, cases=None) -> list[str]
    preprocess_case(image_paths, label_path, plans) -> PreprocessedCase
    restore_to_original(prediction, properties) -> array on the input grid
    labels_on_original_grid(probabilities, properties) -> labels on the input grid, volumes kept
    resample_image / resample_labels / resample_probabilities
    case_ids(out_dir) -> the preprocessed cases' identifiers
    load_case(out_dir, case_id) -> (opened (C, z, y, x) image, (z, y, x) uint8 labels, properties)
    open_array(path) -> a stored array opened for reading (slices decompress only the chunks they touch)
"""
from autoseg.preprocessing.preprocess import (PreprocessedCase, preprocess_case, preprocess_dataset,
                                              labels_on_original_grid, restore_to_original)
from autoseg.preprocessing.resampling import resample_image, resample_labels, resample_probabilities
from autoseg.preprocessing.storage import case_files, case_ids, load_case, load_labels, open_array, plans_key

__all__ = [
    "PreprocessedCase", "preprocess_case", "preprocess_dataset", "restore_to_original", "labels_on_original_grid",
    "resample_image", "resample_labels", "resample_probabilities", "case_files", "case_ids", "load_case", "load_labels",
    "open_array", "plans_key",
]
