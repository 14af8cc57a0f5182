"""The package version (its own module so that mac/__init__ and the modules it imports can all read
it without importing each other); pyproject.toml states the same."""

__version__ = "0.1.0"
