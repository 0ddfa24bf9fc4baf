"""Config files: each exposes get_config(arg) returning a locked ConfigDict."""
