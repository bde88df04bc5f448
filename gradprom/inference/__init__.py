"""Use a trained enhancer: `gradprom enhance` (images, .npz, DICOM, stores; locally or on Ray Data) and
`gradprom export` (ONNX, TorchScript).

runs.py loads a run's models; sources.py reads inputs into unit-range images; enhance.py runs the network by
sliding windows; writers.py writes each input's own kind back; manifest.py records input -> output with
checksums; pipeline.py ties them together with a progress bar; ray_batch.py is the Ray Data path for stores;
export.py writes ONNX / TorchScript files with a sidecar JSON.
"""
