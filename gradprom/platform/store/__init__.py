"""The Parquet image store (see format.py for the on-disk layout): write, convert, check, show, load, stream."""
