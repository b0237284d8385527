"""Scoring generated images after a run: the metrics (`evaluate`) and the reports, tables and plots
(`report`). Above rewards (the metrics use their image backbones), below training (selection scores with it).
"""
