"""The floor the stages stand on: what ``prepare`` made, run folders (identity, ``run.json``,
claiming, results), fold inputs and the training tasks the train stage chooses from."""
