"""One module per page: runs (the table of every run), run, tuning, federation and ray."""
