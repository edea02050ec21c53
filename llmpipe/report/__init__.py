"""The report card of a pipeline run, read only from what its artifacts already hold.

collect.py gathers each step (inputs, params, counts, timings) and each section's data from the
manifests and files; lineage.py finds the documents behind the numbers (removed by a rule, kept
into the token shards) with their source records; figures.py draws the PNG plots; html.py and
markdown.py render the same data as one self-contained page and as Markdown. stages/report.py
runs them as a stage, `llmpipe report PIPELINE` over every step of a pipeline file.
"""
