"""The one error family users see. The CLI turns these into a single line and a non-zero exit."""


class FewsamError(Exception):
    """A problem the user can fix (bad input, wrong option, incompatible files)."""


class DataError(FewsamError):
    """Input data is missing, unreadable, or inconsistent (shapes, label values)."""


class CacheError(FewsamError):
    """An embedding cache entry is corrupt or was written by another model/preprocessing."""


class ModelError(FewsamError):
    """A checkpoint is missing, unreadable, or does not match the requested model."""


class RunError(FewsamError):
    """A run directory is missing, incomplete, or would be overwritten."""
