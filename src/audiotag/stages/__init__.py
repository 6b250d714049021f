"""The stages the command line runs: thin functions that compose the layers below.

``train`` (an experiment trained by the training task it chooses), ``tune`` (a hyperparameter
search), ``pretrain`` (an encoder pretrained on unlabeled audio), ``embed``, ``weights``,
``new-competition``, ``package`` (the offline Kaggle bundle), ``report`` (the HTML page of a
competition's results). They stand side by side on ``audiotag.runs`` (what ``prepare`` made, run
folders, training tasks): no stage imports another, and nothing below this package imports it.
The command line (``audiotag.cli``) parses the options and hands each stage typed arguments.
"""
