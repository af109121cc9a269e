"""Qt-free state behind the views: scan statistics, the threshold choice, results.

Nothing here imports Qt, so every rule the window applies (which dimensions are
outliers, what a threshold costs) is testable without a display. Views observe
these objects through plain callbacks (`subscribe`).
"""
