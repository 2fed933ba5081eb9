"""Pipeline stages: one module per stage (<Stage>Config, a pure function, a thin @task)."""
