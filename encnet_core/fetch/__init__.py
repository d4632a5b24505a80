"""Generic fetching: resumable, verified downloads and safe archive extraction."""
