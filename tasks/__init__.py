"""Prefect tasks: one per pipeline stage, thin wrappers around dskd that write artifacts and track them."""
