"""The only package that imports mlflow: tracking sink, run lineage and the model registry."""
