"""Scoring generated images after a run: the metric registry (`metrics`), the evaluation of runs against a
subject (`evaluate`) and the reports, tables and plots (`report`). Above rewards (the metrics use their image
backbones and scorers) and maths (`similarity`).
"""
