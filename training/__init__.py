"""Pure training library: data validation, normalisation, the linear model and its three training loops.

Imports torch, pandas/numpy and the standard library only; never prefect or mlflow (a test checks this).
"""
