"""The book's experiment helpers: data, model builders, training, evaluation, statistics, plots.

They build on the core (``pcnet``), which never imports them. Import the modules you need, e.g.
``from pcnet.experiments import data, models``; nothing is loaded or created at import.
"""
