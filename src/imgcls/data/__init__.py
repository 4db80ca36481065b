"""From a folder of photos to uint8 batches: the first rooms of the hallway.

    files.py       the one walker: files under a root, one link policy for every label source
    labels.py      label sources (folders, name:REGEX, csv:FILE) on top of files.py
    scan.py        DatasetIndex: every file checked by decoding; nothing deleted
    quarantine.py  move broken files out, with a manifest that undoes it
    split.py       the seeded split; its record in the run folder, read back on resume
    download.py    fetch and safely unzip the Kaggle archive
    preprocess.py  THE decode/orient/convert/resize recipe, versioned (PREPROCESS_VERSION)
    cache.py       each photo decoded once into one uint8 array on disk (.npy)
    loader.py      shuffled, sharded uint8 batches
    augment.py     whole-batch augmentation on the device
Imports nothing from train/, infer/ or viz/.
"""
