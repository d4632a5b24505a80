"""Training, evaluation, inference and export engines."""
