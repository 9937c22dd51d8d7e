"""cmrfm.engine."""
