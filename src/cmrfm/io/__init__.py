"""cmrfm.io."""
