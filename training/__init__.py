"""Pure training library: data validation, normalisation, the line and chapter 6's network, three loops.

Imports torch, pandas/numpy and the standard library only; never prefect or mlflow (a test checks this).
"""
