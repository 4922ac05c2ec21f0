"""Fixtures starting the Google Cloud emulators (filled in by the GCP adapters' work)."""
