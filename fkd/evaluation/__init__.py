"""Evaluation: NME / FR / AUC and the report of a run (results.json, results.md, plots)."""
