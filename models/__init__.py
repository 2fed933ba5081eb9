"""Plain PyTorch BERT-style models; know nothing of Prefect, MLflow or pydantic."""
