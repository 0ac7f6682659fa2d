"""Train gmkit's MNIST feature extractor (the one behind FD-gmkit-mnist) and write it to gmkit/weights.

    OMP_NUM_THREADS=1 python benchmarks/train_extractor.py

Prints the file's sha256, which must then be recorded in gmkit/metrics/mnist.py.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from gmkit.checkpoint import save_tensors
from gmkit.metrics.mnist import EXTRACTORS, extractor_path, train_extractor

if __name__ == "__main__":
    torch.set_num_threads(1)
    net, acc = train_extractor("mnist", epochs=4, seed=0)
    path = extractor_path("mnist")
    meta = {"gmkit.kind": "feature-extractor", "gmkit.data": "mnist", "gmkit.heldout_accuracy": f"{acc:.4f}",
            "gmkit.recipe": json.dumps({"command": "OMP_NUM_THREADS=1 python benchmarks/train_extractor.py",
                                        "epochs": 4, "seed": 0, "torch": torch.__version__})}
    save_tensors(path, net.state_dict(), meta)
    print(json.dumps({"file": str(path), "heldout_accuracy": round(acc, 4),
                      "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}))
