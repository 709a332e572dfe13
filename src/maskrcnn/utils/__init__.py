"""Small shared helpers with one job each (``files``: atomic writes and output folders)."""
