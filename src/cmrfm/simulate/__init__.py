"""cmrfm.simulate."""
