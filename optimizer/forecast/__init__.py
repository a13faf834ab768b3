"""Demand forecasting: regular series, a registry of models, rolling-origin backtests and
conformal intervals. Pure (numpy and scikit-learn only): the store builds series, the API and
the CLI call in, nothing here does I/O beyond reading a CSV the caller names."""
