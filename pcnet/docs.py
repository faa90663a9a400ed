"""Showing pcnet's own source in the book."""
from __future__ import annotations

import inspect


def show_source(obj) -> None:
    """Display the source of a pcnet function or class (syntax highlighted in a notebook)."""
    code = inspect.getsource(obj)
    try:
        from IPython.display import Code, display
    except ImportError:  # plain Python: print it
        print(code)
        return
    display(Code(code, language="python"))
