"""The network (network.py), its preprocessing (preprocess.py) and TorchScript export (export.py)."""
