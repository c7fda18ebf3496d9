"""Reports: the papers' sensitivity tables rebuilt from MLflow, figures, significance, the best config."""
