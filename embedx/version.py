"""The version of embedx (a module of its own: library modules read it without importing the package)."""
__version__ = "0.1.0"
