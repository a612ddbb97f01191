"""``vatt convert``: the released TensorFlow VATT checkpoints as ordinary vatt checkpoint folders.

``bundle`` reads the TensorBundle format, ``layout`` recognises the model kind and sizes from the key names and
shapes, ``mapping`` turns official variables into this package's tensors, ``run`` writes the folder.
"""
