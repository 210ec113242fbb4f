"""Deployment: the classifier a served model runs (classifier.py), the MLflow pyfunc logged as code
(pyfunc.py), the promotion policy (promotion.py) and registration (registry.py)."""
