"""cmrfm.tasks."""
