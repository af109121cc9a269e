"""What the workbench writes and re-opens: the on-disk layout, export, streaming export, re-open."""
