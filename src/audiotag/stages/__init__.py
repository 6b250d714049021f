"""The stages the command line runs: thin functions that compose the layers below.

``prepare`` (raw data -> clip table -> folds -> feature cache), ``train`` (every fold of an
experiment), ``package`` (the offline Kaggle bundle), ``report`` (the HTML page of a competition's
results). Nothing below this package imports it.
"""
