"""Artifacts on disk (atomic dirs + manifests) and the shared pyarrow.fs store."""
