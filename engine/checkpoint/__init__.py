"""What the workbench writes and re-opens: the on-disk layout, export (in memory and layer by layer), re-open."""
