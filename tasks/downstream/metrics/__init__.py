"""Evaluation metrics as offline `evaluate.Metric` subclasses (GLUE, SQuAD) and the GLUE average."""
