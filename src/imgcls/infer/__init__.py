"""Using a trained model: everything here needs only a checkpoint (or an ONNX file).

    predictor.py     THE inference contract: any input -> the checkpoint's preprocessing ->
                     probabilities (TTA default, single logit, non-finite guard, batching)
    evaluate.py      what an evaluation scores, and its metrics
    export.py        ONNX export, checked against PyTorch through the Predictor
    onnx_backend.py  the Predictor's ONNX Runtime backend (never imports torch)
    serve.py         the web page and JSON API
Imports nothing from train/.
"""
