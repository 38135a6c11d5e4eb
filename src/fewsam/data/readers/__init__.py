"""One reader per data layout; ``fewsam.data.open.open_dataset`` picks one by looking at a folder."""

from fewsam.data.readers.acdc_h5 import AcdcH5Dataset
from fewsam.data.readers.common import IndexedDataset
from fewsam.data.readers.dicom import DicomDataset
from fewsam.data.readers.fairseg_npz import FairSegDataset
from fewsam.data.readers.nifti import NiftiDataset
from fewsam.data.readers.png_folder import PngFolderDataset

__all__ = ["AcdcH5Dataset", "DicomDataset", "FairSegDataset", "IndexedDataset", "NiftiDataset", "PngFolderDataset"]
