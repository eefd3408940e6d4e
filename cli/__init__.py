"""Click command-line interface (``embedx.cli``): parse, call the library, render."""
