"""Getting files onto the disk: one module per host or format (http, zenodo, splitzip, extract,
kaggle, hub: the Hugging Face hub and other tools' caches, weights), all behind one network gate
(network: ``AUDIOTAG_OFFLINE``). They import only :mod:`audiotag.core` and each other: what needs a
higher layer (reading a state dict with torch) comes in as an argument.
"""
