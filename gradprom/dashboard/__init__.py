"""The dashboard: a read-only Dash app over run directories (DESIGN.md §4). It reads Parquet and JSON with
pyarrow and never imports the training code, so it starts in a second and runs beside a cluster's storage."""
