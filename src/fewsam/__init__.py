"""fewsam: label-efficient and fair Segment Anything for medical images."""

__version__ = "0.1.0"
