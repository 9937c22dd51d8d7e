"""cmrfm.data."""
