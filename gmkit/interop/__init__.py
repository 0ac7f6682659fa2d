"""Reading other tools' model formats into gmkit's own modules (no foreign code at run time).

``diffusers``: diffusers-format pipeline folders and Hub repos (``model_index.json``) mapped onto
gmkit's UNet, autoencoders and samplers by renaming keys and translating configs.
``pickles``: the one guarded door for pickled weights (``--allow-pickle``).
``hub``: Hugging Face Hub access for multi-file repos (revision, cache, offline mode).
"""
