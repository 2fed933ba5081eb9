"""Presets (TOML) and Prefect deployments."""
