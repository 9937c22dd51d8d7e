"""cmrfm.pretrain."""
