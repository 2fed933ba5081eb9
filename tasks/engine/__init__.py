"""Plain PyTorch training machinery shared by pre-training and fine-tuning (no Prefect, no MLflow)."""
