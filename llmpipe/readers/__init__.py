"""Raw-input readers: each yields (record dict) or reports a bad record through TaskStats."""
