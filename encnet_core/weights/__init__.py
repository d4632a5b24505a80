"""A model on disk: its metadata, checkpoint and model files, loading them, the zoo of published weights
(by name), backbone weights and export. Imports models/ (never the reverse) and never the training loop."""
