"""cmrfm.models."""
