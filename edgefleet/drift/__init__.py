"""Model quality at the edge (issue 14): drift statistics against a reference.

``stats``      PSI, KS on binned data and Jensen-Shannon divergence, pure Python over
               counts, so the controller (no NumPy) can merge and score histograms.
``reference``  the reference distributions ``edgefleet models push --reference``
               computes from representative inputs (NumPy and onnxruntime: CLI side).
``sketch``     the runner's windowed histograms of live inputs and outputs (NumPy only).
"""
