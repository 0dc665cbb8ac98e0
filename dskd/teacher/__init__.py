"""Stage 3: the teacher model, its cached pass (Parquet schema, writer) and reservoir merging."""
