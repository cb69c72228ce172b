"""Studies: run W&B sweep files locally, collect runs, render the paper's tables and scaling plots.

- ``studies.sweep``: validate, expand and execute a W&B sweep YAML without a W&B server (resumable).
- ``studies.collect``: flat run records from local run directories or the W&B API.
- ``studies.tables``: the paper's tables as Markdown, CSV and LaTeX.
- ``studies.plots``: metric-vs-scale plots with power-law fits, raw vs clustered labels.
- ``studies.report``: the ``make_report.py`` command (collect, tables, plots in one folder).
"""
