"""cmrfm.clinical."""
