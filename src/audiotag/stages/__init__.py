"""The stages the command line runs, one module each: thin functions that take typed arguments and
compose the layers below (``audiotag.runs`` first). No stage imports another."""
