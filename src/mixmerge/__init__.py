"""mixmerge: decide, then execute, whether to mix task data or merge task specialists."""

__version__ = "0.1.0"
